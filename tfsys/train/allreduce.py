"""The all-reduce executor: single, mirrored and multi_worker run the one step through their
strategy, K steps per call (`train.steps_per_loop`).

K steps run inside one `tf.function` as a `tf.while_loop`, the host reading their results once
per call: each step's loss, metric sums, gradient norm and learning rate come back as arrays of
K. Between the steps of a call nothing returns to Python (on a GPU a `float()` per step stalls
the device until the step is done). The per-replica LSTM state is a loop variable: it stays on
its replica's device from one step to the next.
"""
import numpy as np
import tensorflow as tf

from tfsys.train.executor import Stretch
from tfsys.train.precision import allreduce_dtype
from tfsys.train.step import gradient_step, sq_norm


def all_reduce_sum(ctx, grads, dtype=tf.float32):
  """The replicas' gradients summed (a replica context's all-reduce), sent in `dtype`: bf16
  halves the bytes each gradient puts on the wire and rounds each replica's gradient to 8
  mantissa bits first (the sum of the rounded parts comes back in float32).

  A sparse gradient whose row count is known only at run time (the char CNN's embedding: the
  rows of the batch's distinct words) is summed dense: MultiWorkerMirroredStrategy all-gathers
  sparse gradients, and inside the K-step loop of a call its gather of slices of unequal length
  fails ("Shape mismatch in the collective", measured on two workers). Such tables are small
  (262 x 15); a word embedding's gradient has a static row count (the batch's tokens) and stays
  sparse."""
  if ctx.num_replicas_in_sync > 1:
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices)
             and g.values.shape[0] is None else g for g in grads]
  if dtype == tf.float32:
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)

  def down(g):
    if isinstance(g, tf.IndexedSlices):
      return tf.IndexedSlices(tf.cast(g.values, dtype), g.indices, g.dense_shape)
    return tf.cast(g, dtype)

  def up(g, like):
    if isinstance(g, tf.IndexedSlices):
      return tf.IndexedSlices(tf.cast(g.values, like.dtype), g.indices, g.dense_shape)
    return tf.cast(g, like.dtype)
  summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [down(g) for g in grads])
  return [up(s, g) for s, g in zip(summed, grads)]


class AllReduceExecutor:
  agreed_stop = True   # a SIGTERM rides the step's all-reduce to every worker

  def __init__(self, run):
    self.r = run
    config, strategy = run.config, run.backend.strategy
    self.strategy = strategy
    self.max_steps_per_call = int(config.train.get("steps_per_loop", 1))
    self.alone = run.backend.cluster is None   # single, mirrored: no other worker process
    self._step = run.start
    model, optimizer, learning_rate = run.model, run.optimizer, run.learning_rate
    variables, step_var = run.variables, run.step_var
    replicas, local_batch = run.replicas, run.local_batch
    clip = config.optim.clip_norm
    per_token_scale = run.per_token_scale
    # Two batch sizes need two replicas: the noise scale compares a replica's gradient with the
    # all-reduced one (McCandlish et al. 2018, App. A.1).
    self.track_noise = config.monitor.noise_scale_every > 0 and replicas > 1
    track_noise = self.track_noise
    loss_scale = run.loss_scale   # float16: dynamic loss scaling, else None
    gradient = gradient_step(model, variables, per_token_scale / replicas,
                             config.train.get("jit_compile", False), loss_scale)
    # With one replica the all-reduce is the identity: nothing to round.
    reduce_dtype = (allreduce_dtype(config) if replicas > 1 or not self.alone else tf.float32)

    def replica_rows(ctx):
      lo = ctx.replica_id_in_sync_group * local_batch
      return tf.nest.map_structure(lambda v: tf.identity(v[lo:lo + local_batch]), run.carried)
    # Models that carry nothing between batches (whole sentences) have state ().
    self.carries_state = run.carries_state
    self.state = (strategy.experimental_distribute_values_from_function(replica_rows)
                  if run.carries_state else ())
    leaves = tf.nest.flatten(self.state)
    if leaves and len(strategy.experimental_local_results(leaves[0])) == 1:
      # One replica in this process (single, multi_worker): strategy.run returns its state as
      # plain tensors, so the loop variable must start as plain tensors too.
      self.state = tf.nest.map_structure(
          lambda v: strategy.experimental_local_results(v)[0], self.state)

    def step_fn(batch, state):
      # Each replica's loss is its local per-token mean; dividing by the replica count makes
      # the summed gradients the gradient of the global-batch mean.
      loss, grads, metrics, new_state = gradient(batch, state, step_var)
      out = {"loss": loss, "metrics": metrics}
      if track_noise:
        # This replica's gradient of its own mean loss: the "small batch" estimate.
        out["small_sq"] = sq_norm(grads) * (replicas / per_token_scale) ** 2
      # All-reduce here, not in the optimizer, so that clipping sees the global gradient.
      ctx = tf.distribute.get_replica_context()
      grads = all_reduce_sum(ctx, grads, reduce_dtype)
      if track_noise:
        out["big_sq"] = sq_norm(grads) / per_token_scale ** 2   # the "big batch" estimate
      if clip:
        grads, norm = tf.clip_by_global_norm(grads, clip)
      else:
        norm = tf.linalg.global_norm(grads)
      rate = learning_rate(step_var)

      def apply(strategy, grads, norm):  # cross-replica: one update per variable, no second reduce
        if loss_scale is None:
          optimizer.apply(grads, variables, learning_rate(step_var))
        else:
          # The all-reduced norm is the same on every replica and worker, so all skip together
          # a step whose gradients overflowed (not finite): the data moves on, the scale halves.
          finite = tf.math.is_finite(strategy.experimental_local_results(norm)[0])

          def update():
            optimizer.apply(grads, variables, learning_rate(step_var))
            return tf.constant(True)
          with tf.control_dependencies([tf.cond(finite, update, lambda: tf.constant(False))]):
            loss_scale.update(finite)
        step_var.assign_add(1)
      ctx.merge_call(apply, args=(grads, norm))
      out.update(grad_norm=norm, learning_rate=rate)
      return out, new_state

    metric_names = self._metric_names = []

    def one_step(batch, state, stop):
      out, new_state = strategy.run(step_fn, args=(batch, state))
      first = lambda v: strategy.experimental_local_results(v)[0]
      mean = lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
      # One cross-replica sum for the loss (as a mean), every metric sum and the stop flag, not
      # one each: with worker processes each reduction is a collective on the step's critical
      # path. A flag summed above 0 tells every worker that some worker was interrupted.
      names = sorted(out["metrics"])
      metric_names[:] = names   # at trace time: the order of the metric sums in a row
      packed = strategy.run(lambda o: tf.stack([o["loss"] / replicas] +
                                               [tf.cast(o["metrics"][k], tf.float32) for k in names]
                                               + [stop]),
                            args=(out,))
      summed = strategy.reduce(tf.distribute.ReduceOp.SUM, packed, axis=None)
      row = [summed[0], first(out["grad_norm"]), first(out["learning_rate"])]
      if track_noise:
        row += [mean(out["small_sq"]), first(out["big_sq"])]
      return tf.stack(row + [summed[i + 1] for i in range(len(names))]), summed[-1], new_state

    @tf.function(reduce_retracing=True)   # sentence batches vary in length: trace [B, None] once
    def train_step(iterator, state, num_steps, stop):   # the name traces and graphs show
      """Up to num_steps steps; stops after the first whose summed stop flag is above 0.
      Returns [steps run, figures] (a row per step: loss, grad norm, learning rate, [noise],
      metric sums), whether they stopped, and the state."""
      rows = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
      i, stopped = tf.constant(0), tf.constant(False)
      while i < num_steps and not stopped:
        row, flag, state = one_step(next(iterator), state, stop)
        rows = rows.write(i, row)
        stopped = flag > 0
        i += 1
      return rows.stack(), stopped, state

    @tf.function
    def gather_all(state):  # every replica's rows of the LSTM state, in replica order
      return tf.nest.map_structure(lambda s: strategy.gather(s, axis=0), state)

    self._train_steps, self._gather_all = train_step, gather_all
    self._traced = False

  def begin(self) -> None:
    r = self.r
    dataset = self.strategy.distribute_datasets_from_function(
        lambda ctx: r.stream.dataset(r.start, ctx))
    self._iterator = iter(dataset)

  def train(self, num_steps: int, interrupts) -> Stretch:
    r, start = self.r, self._step
    if interrupts.requested and self.alone:
      # No other worker to tell: stop at the step done, without one more.
      return Stretch(start=start, steps=0, losses=np.zeros(0), grad_norms=np.zeros(0),
                     learning_rates=np.zeros(0), stopped=True)
    trace = not self._traced and r.start == 0 and start == 0
    if trace:
      r.writers.trace_on()
    rows, stopped, self.state = self._train_steps(
        self._iterator, self.state, tf.constant(num_steps),
        tf.constant(float(interrupts.requested)))
    if trace:
      r.writers.trace_export("train", "train_step", start)
    self._traced = True
    rows = rows.numpy()   # the call's one host synchronisation
    self._step += len(rows)
    k = 5 if self.track_noise else 3
    return Stretch(
        start=start, steps=len(rows), losses=rows[:, 0], grad_norms=rows[:, 1],
        learning_rates=rows[:, 2],
        noise=(rows[:, 3], rows[:, 4]) if self.track_noise else None,
        metrics={name: rows[:, k + j] for j, name in enumerate(self._metric_names)},
        stopped=bool(stopped))

  def halt(self) -> int:
    return self._step

  def to_host(self, slots: bool) -> None:
    del slots   # the variables are the chief's own

  def after_evaluation(self) -> None:
    pass

  def state_rows(self):
    return self._gather_all(self.state) if self.carries_state else None

  def progress_scalars(self) -> dict:
    ls = self.r.loss_scale
    if ls is None:
      return {}
    return {"optim/loss_scale": float(ls.value.numpy()), "optim/skipped_steps": int(ls.skipped.numpy())}

  def end(self) -> None:
    pass

  def lost(self, error: Exception):
    return self.r.backend.lost_peer(error)   # multi_worker: a peer died or timed out
