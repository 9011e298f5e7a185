"""The parameter-server workers: they read the parameters, compute a gradient on their own rows
with the one step (tfsys/train/step.py) and hand it on.

  SyncWorker   sync_backup: takes the newest token t (older ones are skipped: a late worker jumps
               ahead), reads the parameters, computes its gradient, writes it to its own buffers
               and only then commits (w, t), so that a gradient is used whole or not at all. A
               worker (re)starting joins at global_step without waiting for a token.
  AsyncWorker  async_ps: applies its own gradient on the ps tasks (the baseline Chen et al.
               compare against).

When the chief is gone for chief_timeout_secs, workers exit saying so.
"""
import signal
import threading
import time

import tensorflow as tf
from absl import logging

from tfsys.distribute import cluster as cluster_lib
from tfsys.distribute import ps as ps_lib
from tfsys.errors import EXIT_PREEMPTED, TaskLostError, exit_now
from tfsys.train.calls import patiently
from tfsys.train.ps.straggler import Straggler
from tfsys.train.step import gradient_step


def gradient_function(r, shared, worker: int):
  """A ps worker's computation: (its gradient as (flats, rows) (PSState.split), loss, new state)
  of its rows' batch. Its
  random draws (dropout) are a function of (seed, step, worker): a recomputed step draws the
  same."""
  gradient = gradient_step(r.model, r.variables, r.per_token_scale,
                           r.config.train.get("jit_compile", False))

  @tf.function(reduce_retracing=True)   # sentence batches vary in length
  def compute(batch, state, step):
    loss, grads, _, new_state = gradient(batch, state, step, replica=worker)
    return shared.split(grads), loss, new_state
  return compute


class _Worker:
  """What both kinds of ps worker do: read parameters, compute a gradient on their own rows."""

  def __init__(self, r, shared, watch):
    self.r, self.s, self.ps, self.watch = r, shared, shared.ps, watch
    cluster = r.backend.cluster
    self.me, self.name = cluster.task_index, cluster.name
    if threading.current_thread() is threading.main_thread():
      # Preempted: a worker holds no state (a gradient not yet committed is not used), so it
      # leaves at once; under sync_backup the others go on without it.
      signal.signal(signal.SIGTERM, lambda *_: exit_now(
          f"[{self.name}] preempted (SIGTERM): leaving; a worker holds no state, so nothing is "
          "lost. Restart it to rejoin", EXIT_PREEMPTED))
    c = r.config.distribute
    self.chief_timeout = c.chief_timeout_secs
    self.straggler = Straggler(c.straggler, self.me, r.config.seed)
    self.context = tf.distribute.InputContext(num_input_pipelines=self.ps.num_workers,
                                              input_pipeline_id=self.me,
                                              num_replicas_in_sync=self.ps.num_workers)
    variables, s = r.variables, shared

    @tf.function
    def pull():
      s.params.pull(variables)

    self._pull, self._compute = pull, gradient_function(r, shared, self.me)
    self._iterator, self._data_step, self._state = None, None, None
    self._chief_seen = time.monotonic()

  def _batch(self, step: int):
    """This worker's rows for `step`, continuing the LSTM state if it computed step - 1."""
    if self._data_step != step:
      self._iterator = self.r.stream.replica_windows(step, self.context)
      self._state = self.r.model.initial_state(self.r.local_batch)
    self._data_step = step + 1
    return {k: tf.constant(v) for k, v in next(self._iterator).items()}

  def _gradient(self, step: int, pull: bool = True):
    """(gradient as (flats, rows), loss, seconds this worker took for them, injected delay
    included)."""
    t0 = time.perf_counter()
    if pull:
      self._pull()
    grad, loss, self._state = self._compute(self._batch(step), self._state,
                                            tf.constant(step, tf.int64))
    delay = self.straggler.delay_secs(time.perf_counter() - t0)
    if delay:
      time.sleep(delay)
    return grad, loss, tf.constant(time.perf_counter() - t0, tf.float32)

  def _check_chief(self, waited: float = 0.0) -> None:
    """Exits (status 3) once the chief has not accepted connections for chief_timeout_secs."""
    if cluster_lib.reachable(self.ps.chief_address):
      self._chief_seen = time.monotonic()
      return
    gone = time.monotonic() - self._chief_seen
    if gone >= self.chief_timeout:
      raise ChiefGoneError(f"[{self.name}] the chief ({self.ps.chief_address}) has been gone for "
                           f"{gone:.0f} s (--config.distribute.chief_timeout_secs); exiting. "
                           "Relaunch the cluster to resume from its last checkpoint")


class ChiefGoneError(TaskLostError):
  pass


class SyncWorker(_Worker):

  def __init__(self, r, shared, watch):
    super().__init__(r, shared, watch)
    s, me = shared, self.me
    queue = s.tokens[me]

    variables = r.variables

    def newest_token_and_parameters():
      """Blocks for a token, skips to the newest one queued (a late worker jumps ahead), then
      reads the parameters of that step into the local variables."""
      with tf.device(s.devices[0]):
        tok = tf.raw_ops.QueueDequeueV2(handle=queue, component_types=[tf.int64])[0]
        rest = ps_lib.dequeue_all(queue)[0]
        newest = tf.reduce_max(tf.concat([[tok], rest], 0))
      with tf.control_dependencies([newest]):
        s.params.pull(variables)
      return tf.identity(newest)

    def write_and_commit(grad, step, loss, secs):
      """Writes this worker's gradient to its buffers, then commits it for `step`."""
      fingerprint = s.fingerprint(*grad)
      writes = s.write(me, *grad)
      with tf.device(s.devices[0]), tf.control_dependencies(writes):
        mark = s.committed.scatter_update(tf.IndexedSlices(step[None], tf.constant([me])))
      with tf.device(s.devices[0]), tf.control_dependencies([mark]):
        return tf.raw_ops.QueueEnqueueV2(handle=s.commits, components=[
            tf.constant(me, tf.int64), step, loss, secs, fingerprint])

    @tf.function
    def take_token():
      return newest_token_and_parameters()

    # The table rows a gradient touched vary in number from one step to the next: one trace
    # with their leading dimension unknown, not one per step.
    @tf.function(reduce_retracing=True)
    def push_and_take(grad, step, loss, secs):
      """Commits a gradient and waits for the next step, in one call (one round trip)."""
      with tf.control_dependencies([write_and_commit(grad, step, loss, secs)]):
        return newest_token_and_parameters()

    @tf.function
    def skip_tokens():
      with tf.device(s.devices[0]):
        ps_lib.dequeue_all(queue)

    self._take_token, self._skip_tokens = take_token, skip_tokens
    self._push_and_take = push_and_take

  def _next_token(self, fn=None) -> int:
    """The next step to compute, from fn() (default: take_token); checks on the chief while it
    waits."""
    def on_wait(secs):
      self._check_chief(secs)
      self.watch.check()
    token = int(patiently(fn or self._take_token, 1.0, on_wait))
    self._chief_seen = time.monotonic()   # a new step: the chief was alive a moment ago
    return token

  def train(self) -> None:
    if self.s.started():
      # (Re)joining a running job: start at the current step, not at a queued token (a killed
      # worker's pending dequeue may have swallowed one).
      self._skip_tokens()
      token = int(self.s.read_step())
      logging.info("[%s] joining at step %d", self.name, token)
    else:
      logging.info("[%s] waiting for the chief to start", self.name)
      token = self._next_token()
    pulled = False   # take_token reads the parameters itself; joining does not
    last, pushed = -1, 0
    try:
      while True:
        if token > last:
          grad, loss, secs = self._gradient(token, pull=not pulled)
          step = tf.constant(token, tf.int64)
          last, pushed = token, pushed + 1
          token = self._next_token(lambda: self._push_and_take(grad, step, loss, secs))
          if pushed % self.r.config.train.log_every == 0:
            logging.info("[%s] pushed %d gradients, the last for step %d", self.name, pushed, last)
        else:
          token = self._next_token()
        pulled = True
    except (tf.errors.OutOfRangeError, tf.errors.CancelledError):
      reached = int(self.s.read_step())
      if reached < self.r.total_steps:   # the chief stopped early: preempted or interrupted
        exit_now(f"[{self.name}] the chief stopped training at step {reached} of "
                 f"{self.r.total_steps} (preempted or interrupted); pushed {pushed} gradients. "
                 "Relaunch the cluster to resume", EXIT_PREEMPTED)
      logging.info("[%s] the chief ended training; pushed %d gradients", self.name, pushed)
    except ChiefGoneError as e:
      exit_now(str(e), e.exit_status)


# ==================================================================== async_ps
class AsyncWorker(_Worker):
  """Reads the parameters, computes a gradient and applies it on the ps tasks itself."""

  def __init__(self, r, shared, watch):
    super().__init__(r, shared, watch)
    s, me = shared, self.me

    @tf.function(reduce_retracing=True)   # the touched rows vary in number (push_and_take)
    def apply(grad, loss, secs):
      r.learning_rate.decay.assign(s.lr_decay)
      with tf.device(s.devices[0]):
        step = s.global_step.read_value()
      rate = r.learning_rate(step)
      _, updates = s.apply(*grad, rate, tf.cast(step + 1, tf.float32))
      with tf.device(s.devices[0]), tf.control_dependencies(updates):
        new = s.global_step.assign_add(1)
        tf.raw_ops.QueueEnqueueV2(handle=s.commits, components=[
            tf.constant(me, tf.int64), new, loss, secs, tf.constant(0.0)])
      return new

    self._apply = apply

  def train(self) -> None:
    while not self.s.started():
      self._check_chief()
      time.sleep(0.2)
    step, applied, last_check = int(self.s.read_step()), 0, time.monotonic()
    # This worker's own position in its rows of the stream: one window per update it computes.
    cursor = step // self.ps.num_workers
    logging.info("[%s] starting at step %d", self.name, step)
    while step < self.r.total_steps:
      grad, loss, secs = self._gradient(cursor)
      cursor += 1
      if not self.s.started():   # the chief stopped the run early (preempted, interrupted)
        exit_now(f"[{self.name}] the chief stopped training at step {int(self.s.read_step())} "
                 f"of {self.r.total_steps} (preempted or interrupted); applied {applied} "
                 "gradients. Relaunch the cluster to resume", EXIT_PREEMPTED)
      step = int(self._apply(grad, loss, secs))
      applied += 1
      if time.monotonic() - last_check > 2.0:
        try:
          self._check_chief()
        except ChiefGoneError as e:
          exit_now(str(e), e.exit_status)
        last_check = time.monotonic()
    logging.info("[%s] applied %d gradients; training reached step %d", self.name, applied, step)


