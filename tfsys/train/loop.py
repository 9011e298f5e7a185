"""The one training loop: `train_and_evaluate(config, workdir)` for every model and backend.

Resumes by itself: if WORKDIR holds checkpoints it continues from the newest with the step, the
optimizer, the learning-rate decay, the carried LSTM state and the data position (the stream is
a pure function of the step) restored.

The all-reduce backends (single, mirrored, multi_worker) run the step below through their
strategy; the parameter-server backends (sync_backup, async_ps) split the same step between a
chief that applies updates and workers that compute gradients (ps_loop.py).
"""

import os

import numpy as np
import tensorflow as tf
from absl import logging

from tfsys.distribute.backends import make_backend
from tfsys.monitor import NoiseScale, StepProfiler, Throughput
from tfsys.errors import exit_now
from tfsys.train.evaluate import _reset
from tfsys.train.preemption import Preemption, preempted
from tfsys.train.run import NonFiniteLossError, Run, sq_norm

__all__ = ["NonFiniteLossError", "train_and_evaluate"]


def train_and_evaluate(config, workdir: str) -> dict | None:
  """Trains config's model on config's data in workdir; returns the final metrics.

  Returns None in a process that has no results of its own (a parameter-server worker).
  """
  profiler = StepProfiler(config.monitor.profile_steps, os.path.join(workdir, "train"))
  backend = make_backend(config.distribute)  # first: fixes devices and threads
  if backend.ps is not None:
    profiler.unsupported(config.distribute.backend)
    from tfsys.train import ps_loop
    return ps_loop.run(config, workdir, backend)
  replicas = backend.strategy.num_replicas_in_sync
  return _train_allreduce(Run(config, workdir, backend, replicas, data_shards=replicas), profiler)


def _train_allreduce(run: Run, profiler: StepProfiler) -> dict:
  config, strategy = run.config, run.backend.strategy
  model, optimizer, learning_rate = run.model, run.optimizer, run.learning_rate
  variables, step_var, writers = run.variables, run.step_var, run.writers
  replicas, local_batch, start = run.replicas, run.local_batch, run.start

  def replica_rows(ctx):
    lo = ctx.replica_id_in_sync_group * local_batch
    return tf.nest.map_structure(lambda v: tf.identity(v[lo:lo + local_batch]), run.carried)
  # Models that carry nothing between batches (whole sentences) have state ().
  state = (strategy.experimental_distribute_values_from_function(replica_rows)
           if run.carries_state else ())

  # ---------------------------------------------------------------- the step
  clip = config.optim.clip_norm
  per_token_scale = run.per_token_scale
  noise_every = config.monitor.noise_scale_every
  track_noise = noise_every > 0 and replicas > 1   # two batch sizes need two replicas
  noise_scale = NoiseScale(config.monitor.noise_scale_decay)

  def step_fn(batch, state):
    state = _reset(state, batch["reset"])
    with tf.GradientTape() as tape:
      loss, metrics, new_state = model.loss(batch, state, training=True, step=step_var)
      # Each replica's loss is its local per-token mean; dividing by the replica count makes
      # the summed gradients the gradient of the global-batch mean. loss_per="sequence" sums
      # over the unrolled steps instead (Zaremba et al. 2014, Kim et al. 2016: the objective
      # their lr = 1 with norm clipping at 5 was tuned for).
      scaled = loss * per_token_scale / replicas
    grads = tape.gradient(scaled, variables)
    out = {"loss": loss, "metrics": metrics}
    if track_noise:
      # This replica's gradient of its own mean loss: the "small batch" estimate.
      out["small_sq"] = sq_norm(grads) * (replicas / per_token_scale) ** 2
    # All-reduce here, not in the optimizer, so that clipping sees the global gradient.
    ctx = tf.distribute.get_replica_context()
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    if track_noise:
      out["big_sq"] = sq_norm(grads) / per_token_scale ** 2   # the "big batch" estimate
    if clip:
      grads, norm = tf.clip_by_global_norm(grads, clip)
    else:
      norm = tf.linalg.global_norm(grads)
    rate = learning_rate(step_var)

    def apply(_, grads):  # cross-replica context: one update per variable, no second reduce
      optimizer.apply(grads, variables, learning_rate(step_var))
      step_var.assign_add(1)
    ctx.merge_call(apply, args=(grads,))
    out.update(grad_norm=norm, learning_rate=rate)
    return out, new_state

  @tf.function(reduce_retracing=True)   # sentence batches vary in length: trace [B, None] once
  def train_step(batch, state, stop):
    out, new_state = strategy.run(step_fn, args=(batch, state))
    first = lambda v: strategy.experimental_local_results(v)[0]
    mean = lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
    # One cross-replica sum for the loss (as a mean), every metric sum and the preemption flag,
    # not one each: with worker processes each reduction is a collective on the step's
    # critical path. A flag summed above 0 tells every worker that some worker got SIGTERM.
    names = sorted(out["metrics"])
    packed = strategy.run(lambda o: tf.stack([o["loss"] / replicas] +
                                             [tf.cast(o["metrics"][k], tf.float32) for k in names]
                                             + [stop]),
                          args=(out,))
    summed = strategy.reduce(tf.distribute.ReduceOp.SUM, packed, axis=None)
    result = {"loss": summed[0], "grad_norm": first(out["grad_norm"]),
              "learning_rate": first(out["learning_rate"]), "stop": summed[-1],
              "metrics": {k: summed[i + 1] for i, k in enumerate(names)}}
    if track_noise:
      result.update(small_sq=mean(out["small_sq"]), big_sq=first(out["big_sq"]))
    return result, new_state

  @tf.function
  def gather_all(state):  # every replica's rows of the LSTM state, in replica order
    return tf.nest.map_structure(lambda s: strategy.gather(s, axis=0), state)

  def gather_rows(state):
    return gather_all(state) if run.carries_state else None

  # ---------------------------------------------------------------- training
  dataset = strategy.distribute_datasets_from_function(lambda ctx: run.stream.dataset(start, ctx))
  iterator = iter(dataset)
  throughput = Throughput(start, run.total_steps)
  losses, sums = [], {}
  step = start
  profiler.begin(start, enabled=run.is_chief)
  preemption = Preemption().install()
  try:
    while step < run.total_steps:
      if step == start and start == 0:
        writers.trace_on()
      profiler.before(step + 1)
      out, state = train_step(next(iterator), state, tf.constant(float(preemption.requested)))
      if step == start and start == 0:
        writers.trace_export("train", "train_step", step)
      loss = float(out["loss"])
      profiler.after(step + 1)
      run.check_loss(loss, step + 1)
      step += 1
      if float(out["stop"]) > 0:    # some worker got SIGTERM: all save this step together
        if step > run.saved_step:
          run.save(step, gather_rows(state))
        writers.flush()
        raise preempted(step)
      losses.append(loss)
      for k, v in out["metrics"].items():
        sums[k] = sums.get(k, 0.0) + float(v)
      throughput.add(run.words_per_step)
      if step % config.train.log_every == 0 or step == run.total_steps:
        perf = throughput.report(step)
        run.log_progress(step, float(np.mean(losses)), float(out["learning_rate"]),
                         float(out["grad_norm"]), perf, throughput.eta_secs, sums)
        losses, sums = [], {}
      if track_noise and step % noise_every == 0:
        writers.scalars("train", step, noise_scale.update(
            float(out["small_sq"]), float(out["big_sq"]), local_batch, run.batch))
      if step % config.train.histogram_every == 0:
        writers.histograms("train", step, {v.name.split(":")[0]: v for v in variables})
      evaluated = step % run.eval_every == 0 and step < run.total_steps
      if evaluated:
        run.evaluate_and_sample(step)
      if step < run.total_steps and (evaluated or step % config.train.checkpoint_every == 0):
        run.save(step, gather_rows(state))
        writers.flush()
  except KeyboardInterrupt:
    if step > run.saved_step:
      run.save(step, gather_rows(state))
    logging.info("interrupted at step %d; run the same command again to resume", step)
    raise
  except tf.errors.OpError as e:
    lost = run.backend.lost_peer(e)   # multi_worker: a peer died or timed out in a collective
    if lost is None:
      raise
    exit_now(str(lost), lost.exit_status)   # the collective executor may block a clean exit
  finally:
    preemption.uninstall()
    profiler.stop()   # a run that ends (or fails) before step B still writes its trace

  return run.finish(step, lambda: gather_rows(state))
