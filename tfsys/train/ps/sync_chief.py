"""sync_backup's chief (Chen et al. 2016; TF1's SyncReplicasOptimizer semantics), an executor.

One step t: the chief takes commits in arrival order until it has N distinct workers for step
t; a commit for an older step is a dropped (stale) gradient, never applied. It averages the N
buffers on the ps tasks, clips by the global norm, applies the optimizer shard by shard,
increments global_step and only then puts t + 1 on every token queue, so no worker reads
parameters of a half-applied step. With b >= 1 a dead worker is not waited for; with b = 0 the
chief waits and says whom it waits for.

The steps up to the controller's next duty run on the ps as one loop in one call (no round trip
to the chief between them); their records, scalars and log lines are written here afterwards,
each under its own step (records.py).
"""
import tensorflow as tf
from absl import logging

from tfsys.distribute import ps as ps_lib
from tfsys.train.calls import Call
from tfsys.train.executor import Stretch
from tfsys.train.ps.records import StepRecorder
from tfsys.train.ps.chief import ChiefExecutor, write_step_graph


class SyncChief(ChiefExecutor):
  """Applies the first N gradients of each step."""

  def __init__(self, r, shared, watch):
    super().__init__(r, shared, watch)
    c = r.config.distribute
    self.n, self.num_workers = self.ps.replicas_to_aggregate, self.ps.num_workers
    self.wait_log_secs = c.wait_log_secs
    self.recorder = StepRecorder(r, self.num_workers, c.log_workers_every)
    s = shared
    W = self.num_workers

    @tf.function
    def steps_on_ps(n, first, rates, ts):
      """Runs steps first, first + 1, ... (one per rate) on the ps tasks, in one call. Each
      step takes commits in arrival order until N distinct workers have one for it, applies
      the average of those workers' buffers, increments global_step and only then puts the new
      step on every token queue (no worker reads parameters of a half-applied step). Every op
      runs on the ps tasks: steps follow one another there without a round trip to this
      process. A commit from worker -1 (`stop`) ends the call before its step is applied.

      Returns every commit taken, in arrival order, as (worker, step, loss, secs, fingerprint,
      index of the step that took it); per step applied, (grad norm, sum over used |g_w|^2,
      |mean g|^2, fingerprint of the mean applied); and per step applied, the ps's clock when
      its tokens went out; all copied here.
      """
      count = tf.shape(rates)[0]
      with tf.device(s.devices[0]):
        nf = tf.cast(n, tf.float32)

        def collect(step, at, taken):
          """Commits until N distinct workers have one for `step`, or a stop."""
          def more(mask, stop, *_):
            return tf.logical_and(tf.reduce_sum(mask) < nf, tf.logical_not(stop))

          def take(mask, stop, *taken):
            got = [tf.reshape(c, []) for c in tf.raw_ops.QueueDequeueV2(
                handle=s.commits, component_types=ps_lib.COMMIT_TYPES)]
            w, t = got[0], got[1]
            stop = w < 0
            # The first commit of each worker for this step counts; one for an older step is a
            # dropped gradient; a second for this step (a restarted worker) counts for nothing.
            hit = tf.cast(tf.logical_and(tf.equal(t, step), tf.logical_not(stop)), tf.float32)
            mask = tf.maximum(mask, hit * tf.one_hot(tf.maximum(w, 0), W))
            return (mask, stop,
                    *(tf.concat([a, [b]], 0) for a, b in zip(taken, [*got, at])))

          mask, stop, *taken = tf.while_loop(
              more, take, [tf.zeros([W]), tf.constant(False), *taken],
              shape_invariants=[tf.TensorShape([W]), tf.TensorShape([])]
              + [tf.TensorShape([None])] * len(taken), parallel_iterations=1)
          return mask, stop, taken

        def apply(mask, rate, t):
          with tf.control_dependencies([mask]):  # once committed
            flats, rows, small_sq = s.average(mask, nf)
          big_sq = s.sq_norm(flats, rows)
          norm, updates = s.apply(flats, rows, rate, t)
          fingerprint = s.fingerprint(flats, rows)
          with tf.control_dependencies(updates):
            inc = s.global_step.assign_add(1, read_value=False)
          with tf.control_dependencies([inc]):
            new = s.global_step.read_value()
            published = [tf.raw_ops.QueueEnqueueV2(handle=q, components=[new]) for q in s.tokens]
          with tf.control_dependencies(published):
            return tf.stack([norm, small_sq, big_sq, fingerprint])

        def more_steps(i, stop, *_):
          return tf.logical_and(i < count, tf.logical_not(stop))

        def one_step(i, stop, stats, times, *taken):
          step = first + tf.cast(i, tf.int64)
          mask, stop, taken = collect(step, tf.cast(i, tf.int64), taken)

          def applied():
            out = apply(mask, rates[i], ts[i])
            with tf.control_dependencies([out]):
              return out, tf.timestamp()
          out, when = tf.cond(stop, lambda: (tf.zeros([4]), tf.constant(0.0, tf.float64)),
                              applied)
          with tf.control_dependencies([out, when]):  # the next step starts after this one
            nxt = tf.where(stop, i, i + 1)
          return (nxt, stop, stats.write(i, out), times.write(i, when), *taken)

        empty = [tf.zeros([0], dtype) for dtype in (*ps_lib.COMMIT_TYPES, tf.int64)]
        done, _, stats, times, *taken = tf.while_loop(
            more_steps, one_step,
            [tf.constant(0), tf.constant(False), tf.TensorArray(tf.float32, size=count),
             tf.TensorArray(tf.float64, size=count), *empty],
            shape_invariants=[tf.TensorShape([]), tf.TensorShape([]), None, None]
            + [tf.TensorShape([None])] * len(empty), parallel_iterations=1)
        stats, times = stats.stack()[:done], times.stack()[:done]
      # Copied to this process inside the call, not left as remote handles to fetch one by one.
      with tf.device(s.local_device):
        return [tf.identity(x) for x in (*taken, stats, times)]

    @tf.function
    def stop():
      with tf.device(s.devices[0]):
        tf.raw_ops.QueueEnqueueV2(handle=s.commits, components=[
            tf.constant(-1, tf.int64), tf.constant(-1, tf.int64), 0.0, 0.0, 0.0])

    @tf.function
    def drain():
      """Empties the commit and token queues (leftovers of an earlier chief); returns the
      number of commits that were waiting."""
      with tf.device(s.devices[0]):
        n = tf.raw_ops.QueueSizeV2(handle=s.commits)
        ps_lib.dequeue_all(s.commits, ps_lib.COMMIT_TYPES)
        for q in s.tokens:
          ps_lib.dequeue_all(q)
      return n

    @tf.function
    def first_tokens(step):
      with tf.device(s.devices[0]):
        for q in s.tokens:
          tf.raw_ops.QueueEnqueueV2(handle=q, components=[step])

    @tf.function
    def close():
      with tf.device(s.devices[0]):
        for q in s.tokens:
          tf.raw_ops.QueueCloseV2(handle=q, cancel_pending_enqueues=True)

    self._steps_on_ps, self._stop = steps_on_ps, stop
    self._drain, self._first_tokens, self._close = drain, first_tokens, close

  # ---------------------------------------------------------------- the executor
  def begin(self) -> None:
    """Puts the chief's (fresh or restored) state on the ps tasks and releases the workers."""
    r, s = self.r, self.s
    s.push(r.start)
    s.clear_buffers()
    s.set_fingerprint_vectors()
    s.committed.assign(tf.fill([self.num_workers], tf.constant(-1, tf.int64)))
    self._drain()
    s.mark_started()
    self._first_tokens(tf.constant(r.start, tf.int64))
    write_step_graph(r, s)   # while the workers compute the first step
    self.recorder.open()
    logging.info("[chief] state on %d ps task(s); N=%d of %d workers per step", len(s.devices),
                 self.n, self.num_workers)
    self.report_memory()

  def train(self, num_steps: int, interrupts) -> Stretch:
    """Runs num_steps steps on the ps in one call; a Ctrl-C or SIGTERM (deferred by the
    controller) stops the ps after the step under way, and the steps it applied are recorded."""
    r, first = self.r, self._step
    results = self._steps(first, num_steps, interrupts)
    self._pulled.clear()
    self._step += len(results)
    r.optimizer.iterations.assign_add(len(results))
    r.step_var.assign(self._step)
    stretch = self.recorder.record(first, results, self._rates[:len(results)])
    stretch.stopped = interrupts.requested
    if self.n > 1:   # the noise scale compares one worker's gradient with the mean of N
      pts = r.per_token_scale
      stats = [st for _, _, st, _ in results]
      stretch.noise = ([float(st[1]) / self.n / pts ** 2 for st in stats],
                       [float(st[2]) / pts ** 2 for st in stats])
    return stretch

  def halt(self) -> int:
    return self._step   # a stretch ends only once the ps loop has returned (_steps)

  def progress_scalars(self) -> dict:
    return self.recorder.progress_scalars()

  def end(self) -> None:
    self.recorder.close()
    # Workers blocked on a token see the end and exit. In a thread, waited for 10 s at most:
    # with ps0's host unreachable the call could block, and the error that ended the run
    # (raised after this) goes first.
    closing = Call(self._close)
    if closing.finished_within(10.0):
      try:
        closing.result()
      except tf.errors.OpError as e:
        logging.info("[chief] could not close the token queues: %s", type(e).__name__)
    self.recorder.log_totals()

  # ---------------------------------------------------------------- one stretch
  def _steps(self, first: int, count: int, interrupts):
    """Runs `count` steps from `first` on the ps tasks (steps_on_ps), saying whom it waits for
    while it waits. Called within interrupts.deferred(): after a Ctrl-C it starts nothing,
    or stops the ps after the step under way, so that what was applied is known.

    Returns [(used, dropped, stats, ps time) per step applied]: used maps each of the N
    workers used to (loss, fingerprint, secs), dropped lists (worker, step of its gradient,
    secs), stats is (grad norm, sum over used |g_w|^2, |mean g|^2, fingerprint of the mean
    applied).
    """
    r = self.r
    steps = tf.range(first, first + count, dtype=tf.int64)
    rates = tf.broadcast_to(tf.cast(r.learning_rate(steps), tf.float32), [count])
    self._rates = rates.numpy()
    if interrupts.requested:
      return []
    t = int(r.optimizer.iterations.numpy()) + 1     # Adam's step count
    ts = tf.range(t, t + count, dtype=tf.int64)

    def on_wait(secs):
      self.watch.check()      # every second: a dead ps ends the wait within ps_timeout_secs
      if secs % self.wait_log_secs >= 1.0:
        return
      step = int(self.s.read_step())
      committed = self.s.committed.numpy()
      missing = [f"worker{w}" for w in range(self.num_workers) if committed[w] < step]
      logging.warning("[chief] step %d: waited %.0f s for gradients: %d of %d in; waiting for "
                      "%s", step + 1, secs, self.num_workers - len(missing), self.n,
                      ", ".join(missing))
    call = Call(lambda: self._steps_on_ps(tf.constant(self.n), tf.constant(first, tf.int64),
                                          rates, tf.cast(ts, tf.float32)),
                notify=interrupts.events)
    out = interrupts.wait(call, self._stop, 1.0, on_wait)
    *commits, stats, times = (x.numpy() for x in out)
    results = [({}, [], step_stats, float(when)) for step_stats, when in zip(stats, times)]
    for w, t_w, loss, secs, fingerprint, at in zip(*(c.tolist() for c in commits)):
      if w < 0 or at >= len(results):      # the stop, or a commit taken by an unapplied step
        continue
      used, dropped, _, _ = results[at]
      if t_w == first + at and w not in used:      # the rule steps_on_ps applies
        used[w] = (loss, fingerprint, round(secs, 4))
      elif t_w != first + at:
        dropped.append((w, t_w, round(secs, 4)))
    return results

