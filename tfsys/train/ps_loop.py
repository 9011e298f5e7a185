"""Training on parameter servers: sync_backup (Chen et al. 2016) and async_ps.

Tasks (TF_CONFIG): `ps` tasks serve state and run nothing of their own; the `chief` owns the
run (evaluation, checkpoints, TensorBoard) and, under sync_backup, applies every update; the
`worker` tasks compute gradients. Chief and workers are separate eager clients of the ps tasks,
all addressing the same state by name (tfsys/distribute/ps.py):

  params, optimizer slots   sharded over the ps tasks (large tables split by rows)
  grads/<w>/<j>             worker w's latest gradient, the part for ps j (sync_backup)
  global_step               on ps 0
  tokens/<w>                worker w's queue of steps to compute (sync_backup)
  commits                   (worker, step, loss, compute secs, fingerprint) in arrival order

sync_backup, one step t (TF1's SyncReplicasOptimizer semantics):
  worker  takes the newest token t (older ones are skipped: a late worker jumps ahead), reads
          the parameters, computes its gradient, writes it to its own buffers and only then
          commits (w, t). A gradient is therefore used whole or not at all.
  chief   takes commits in arrival order until it has N distinct workers for step t; a commit
          for an older step is a dropped (stale) gradient, never applied. It averages the N
          buffers on the ps tasks, clips by the global norm, applies the optimizer shard by
          shard, increments global_step and only then puts t + 1 on every token queue, so no
          worker reads parameters of a half-applied step.
  A worker (re)starting joins at global_step without waiting for a token. With b >= 1 a dead
  worker is not waited for; with b = 0 the chief waits and says whom it waits for. When the
  chief is gone for chief_timeout_secs, workers exit saying so.

async_ps: each worker reads the parameters, computes its gradient and applies it itself on the
ps tasks (the baseline Chen et al. compare against); the chief evaluates and checkpoints.

`config.train.batch_size` is the batch of one update: N × the per-worker batch under
sync_backup; under async_ps every worker computes on batch_size / num_workers rows, the same
per-worker batch as sync_backup with N = num_workers.
"""
import collections
import contextlib
import json
import os
import queue
import signal
import threading
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfsys.distribute import cluster as cluster_lib
from tfsys.distribute import ps as ps_lib
from tfsys.errors import EXIT_PREEMPTED, TaskLostError, UserError, error_summary, exit_now
from tfsys.monitor import NoiseScale, Throughput
from tfsys.train.evaluate import _reset
from tfsys.train.preemption import SigTerm, preempted
from tfsys.train.run import Run

# sync_backup: one JSON line per applied step, from the chief: the workers used (with each one's
# gradient fingerprint and compute seconds), the gradients dropped as [worker, the step they were
# computed for, compute seconds], the step's seconds and the fingerprint of the averaged gradient
# that was applied.
STEP_RECORD = "sync_steps.jsonl"
FINGERPRINT_SIZE = 65536   # elements per ps task a gradient fingerprint looks at


def run(config, workdir: str, backend) -> dict | None:
  ps = backend.ps
  if ps.role == "ps":
    serve(backend)
  r = Run(config, workdir, backend, replicas=ps.replicas_to_aggregate, data_shards=ps.num_workers)
  if ps.kind == "async_ps":
    # One update is one worker's gradient: an epoch of the stream is num_workers updates.
    epochs_steps = r.total_steps if config.train.num_steps else r.total_steps * ps.num_workers
    r.total_steps, r.words_per_step = epochs_steps, r.words_per_step / r.replicas
    if not config.eval.every_steps:
      r.eval_every *= ps.num_workers
  watch = PSWatch(backend.cluster, config.distribute.ps_timeout_secs)
  try:
    shared = SharedState(r, ps)
    if ps.role == "chief":
      return (SyncChief if ps.kind == "sync_backup" else AsyncChief)(r, shared, watch).train()
    try:
      (SyncWorker if ps.kind == "sync_backup" else AsyncWorker)(r, shared, watch).train()
    finally:
      r.checkpointer.close()
  except tf.errors.OpError as e:
    lost = watch.explain(e)
    if lost is None:
      raise
    # At once: a call of another thread may still be blocked on the ps.
    exit_now(str(lost), lost.exit_status)
  except TaskLostError as e:
    exit_now(str(e), e.exit_status)
  return None


class PSWatch:
  """Whether the ps tasks are there: an error of a call to them becomes one line naming the
  task that is gone, and a wait checks on them so that nobody waits for a dead one forever.

  A ps that died refuses connections (its port is closed) at once; one whose host is
  unreachable times out. A ps that is alive but hung (stopped, swapping) still accepts
  connections and is not detected here.
  """

  def __init__(self, cluster, timeout_secs: float):
    self.me = cluster.name
    self.tasks = [(f"ps{j}", a) for j, a in enumerate(cluster.jobs["ps"])]
    self.timeout_secs = timeout_secs
    self._gone_since = {}

  def unreachable(self) -> list[tuple[str, str]]:
    return [(n, a) for n, a in self.tasks if not cluster_lib.reachable(a, timeout=2.0)]

  def _error(self, gone, why: str) -> TaskLostError:
    names = ", ".join(f"{n} ({a})" for n, a in gone)
    return TaskLostError(f"[{self.me}] parameter server {names} {why}; exiting. The state it "
                         "held is gone with it: relaunch the cluster to resume from the last "
                         "checkpoint")

  def explain(self, e: Exception) -> TaskLostError | None:
    """After a failed call: the ps tasks that do not accept connections now, as one error."""
    gone = self.unreachable()
    if not gone:
      return None
    return self._error(gone, f"is gone ({type(e).__name__}: {error_summary(e, 120)})")

  def check(self) -> None:
    """Raises TaskLostError once a ps task has refused connections for timeout_secs."""
    now = time.monotonic()
    gone = self.unreachable()
    for name, _ in self.tasks:
      if (name, dict(self.tasks)[name]) in gone:
        self._gone_since.setdefault(name, now)
      else:
        self._gone_since.pop(name, None)
    lost = [(n, a) for n, a in gone if now - self._gone_since[n] >= self.timeout_secs]
    if lost:
      raise self._error(lost, f"has not accepted connections for {self.timeout_secs:.0f} s "
                              "(--config.distribute.ps_timeout_secs)")


def serve(backend, grace_secs: float = 60.0) -> None:
  """A ps task: serves the shared state until it is killed (by the launcher or the cluster).

  On SIGTERM (the whole job preempted: every task gets one) it serves on while the chief saves
  the step under way from it, until the chief is gone or for grace_secs, then exits 75.
  """
  cluster = backend.cluster
  server = tf.distribute.Server(tf.train.ClusterSpec(cluster.jobs), job_name="ps",
                                task_index=cluster.task_index, protocol="grpc", start=True)
  logging.info("[%s] parameter server up at %s", cluster.name, server.target)
  terminated = []
  signal.signal(signal.SIGTERM, lambda *_: terminated.append(time.monotonic()))
  chief = backend.ps.chief_address
  while True:   # the server runs in its own threads; this one only watches
    time.sleep(0.5)
    if terminated and (time.monotonic() - terminated[0] > grace_secs
                       or not cluster_lib.reachable(chief, timeout=1.0)):
      exit_now(f"[{cluster.name}] preempted (SIGTERM): the chief is done with this parameter "
               "server; exiting", EXIT_PREEMPTED)


class Straggler:
  """Injected delay of one worker: simulated compute, so that its step's compute takes at least
  compute_ms in all (the real gradient computation counts towards it), plus for a chosen worker
  with `probability` a heavy-tailed scale_ms * (1 + Pareto(shape)) (the delays of Chen et al.'s
  Fig. 2 are)."""

  def __init__(self, c, worker: int, seed: int):
    spec = c.workers.strip()
    try:
      chosen = spec == "all" or (bool(spec) and worker in {int(x) for x in spec.split(",")})
    except ValueError:
      raise UserError(f"--config.distribute.straggler.workers must be '', 'all' or worker "
                      f"indices like '0,2', got {spec!r}") from None
    if c.scale_ms < 0 or c.compute_ms < 0 or c.shape <= 0 or not 0 <= c.probability <= 1:
      raise UserError("--config.distribute.straggler needs compute_ms, scale_ms >= 0, shape > 0 "
                      "and probability in [0, 1]")
    self.c, self.chosen = c, chosen
    self.rng = np.random.default_rng([seed, worker])

  def delay_secs(self, computed_secs: float = 0.0) -> float:
    """Seconds to sleep after a gradient that took `computed_secs` to compute."""
    ms = max(self.c.compute_ms - computed_secs * 1e3, 0.0)
    if self.chosen and self.c.scale_ms and self.rng.random() < self.c.probability:
      ms += self.c.scale_ms * (1.0 + self.rng.pareto(self.c.shape))
    return ms / 1e3


class SharedState:
  """Handles to the state on the ps tasks, made the same way in every client."""

  def __init__(self, r: Run, ps):
    c = r.config.distribute
    devices = ps.ps_devices
    self.r, self.ps, self.devices = r, ps, devices
    self.params = ps_lib.ShardedStore("params", r.variables, devices, c.shard_min_rows)
    opt = r.optimizer
    self.slots = {name: ps_lib.ShardedStore(f"slots/{name}", opt.slots[name], devices,
                                            c.shard_min_rows) for name in opt.slot_names}
    self.global_step = ps_lib.shared_variable("global_step", [], tf.int64, devices[0])
    self.lr_decay = ps_lib.shared_variable("lr_decay", [], tf.float32, devices[0])
    self.commits = ps_lib.commit_queue(devices[0])
    self.started_queue = ps_lib.started_queue(devices[0])
    self.sizes = self.params.sizes
    cluster = r.backend.cluster
    self.local_device = f"/job:{cluster.task_type}/replica:0/task:{cluster.task_index}/device:CPU:0"
    if ps.kind == "sync_backup":
      # The step of each worker's latest commit: whom a waiting chief is waiting for.
      self.committed = ps_lib.shared_variable("committed", [ps.num_workers], tf.int64, devices[0])
      self.tokens = [ps_lib.token_queue(w, devices[0]) for w in range(ps.num_workers)]
      self.buffers = [[ps_lib.shared_variable(f"grads/{w}/{j}", [max(n, 1)], tf.float32, devices[j])
                       for j, n in enumerate(self.sizes)] for w in range(ps.num_workers)]
      self.fingerprint_vectors = [
          ps_lib.shared_variable(f"fingerprint/{j}", [length], tf.float32, devices[j])
          for j, (_, length) in enumerate(self._fingerprint_layout())]

  def flatten(self, grads) -> list:
    """A gradient list as one flat vector per ps task, in that task's layout (dense)."""
    return self.params.flatten([tf.zeros(shape) if g is None else tf.convert_to_tensor(g)
                                for g, shape in zip(grads, self.params.shapes)])

  def apply(self, flats, learning_rate, t):
    """Clips the flat gradients by their global norm and applies the optimizer to each ps
    task's flat parameters, on that task (the optimizers are element-wise, so one update per ps
    task is the update of every variable it holds). Returns the norm before clipping and the
    updates (to order after)."""
    opt, clip = self.r.optimizer, self.r.config.optim.clip_norm
    sq = []
    for j, flat in enumerate(flats):
      with tf.device(self.devices[j]):
        sq.append(tf.reduce_sum(tf.square(flat)))
    norm = tf.sqrt(tf.add_n(sq))
    scale = clip / tf.maximum(norm, clip) if clip else tf.constant(1.0)
    updates = []
    for j, flat in enumerate(flats):
      with tf.device(self.devices[j]):
        slots = [self.slots[name].flats[j] for name in opt.slot_names]
        updates.append(opt._update(self.params.flats[j], flat * scale, learning_rate, t, *slots))  # pylint: disable=protected-access
    return norm, updates

  def _fingerprint_layout(self):
    """(stride, length) of the subsample a fingerprint looks at, per ps task."""
    out = []
    for size in self.sizes:
      size = size or 1
      stride = -(-size // FINGERPRINT_SIZE)
      out.append((stride, -(-size // stride)))
    return out

  def set_fingerprint_vectors(self) -> None:
    """The chief puts the fixed random vectors of `fingerprint` on the ps tasks (once, instead
    of every client drawing them at every push)."""
    for j, (_, length) in enumerate(self._fingerprint_layout()):
      with tf.device(self.devices[j]):
        self.fingerprint_vectors[j].assign(
            tf.random.stateless_normal([length], seed=[20160404, j]))

  def fingerprint(self, flats):
    """r·g over a fixed subsample of at most FINGERPRINT_SIZE elements per ps task, r a fixed
    random vector: linear, so the fingerprint of an average is the average of the fingerprints
    (the step record checks it), and cheap however large the model."""
    out = []
    for j, (flat, (stride, _)) in enumerate(zip(flats, self._fingerprint_layout())):
      with tf.device(self.devices[j]):
        out.append(tf.reduce_sum(self.fingerprint_vectors[j] * flat[::stride]))
    return tf.add_n(out)

  def pull_slots(self) -> None:
    for name, store in self.slots.items():
      store.pull(self.r.optimizer.slots[name])

  def evaluate_and_save(self, step: int, evaluated: bool, save: bool) -> None:
    """The chief's periodic duties: the parameters come back from the ps tasks for an
    evaluation (whose plateau decision goes back to them) or a checkpoint (with the slots)."""
    r = self.r
    if evaluated or save:
      self.params.pull(r.variables)
    if evaluated:
      r.evaluate_and_sample(step)
      self.lr_decay.assign(r.learning_rate.decay)
    if save:
      self.pull_slots()
      r.save(step)
      r.writers.flush()

  @tf.function
  def read_step(self):
    return tf.identity(self.global_step)

  @tf.function
  def _started_size(self):
    with tf.device(self.devices[0]):
      return tf.raw_ops.QueueSizeV2(handle=self.started_queue)

  def started(self) -> bool:
    """Whether the chief has put the run's state on the ps tasks."""
    return int(self._started_size()) > 0

  def mark_started(self) -> None:
    with tf.device(self.devices[0]):
      if int(self._started_size()) == 0:
        tf.raw_ops.QueueEnqueueV2(handle=self.started_queue, components=[tf.constant(1, tf.int64)])

  def mark_stopped(self) -> None:
    """Withdraws the started marker: async workers stop before their next update."""
    with tf.device(self.devices[0]):
      tf.raw_ops.QueueDequeueUpToV2(handle=self.started_queue, n=self._started_size(),
                                    component_types=[tf.int64])

  def settled_step(self, quiet_secs: float = 0.5, limit_secs: float = 10.0) -> int:
    """The global step once it has not moved for quiet_secs (the last updates in flight have
    landed), or after limit_secs."""
    step, since, t0 = int(self.read_step()), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_secs and time.monotonic() - t0 < limit_secs:
      time.sleep(0.05)
      now = int(self.read_step())
      if now != step:
        step, since = now, time.monotonic()
    return step


class _Call:
  """fn() run in a daemon thread, waited for with `wait`.

  A daemon thread, so that a process that gives up (the chief is gone) is not held at exit by
  a call still blocked on the ps; and the main thread stays free to take a KeyboardInterrupt
  and wait again. Completion is an Event, not Thread.join: a join interrupted by
  KeyboardInterrupt can leave the thread looking finished while it still runs (CPython 3.11).
  With `notify`, the call also puts itself there when it ends (see _CtrlC.wait).
  """

  def __init__(self, fn, notify: queue.SimpleQueue | None = None):
    self._result, self._done = {}, threading.Event()

    def target():
      try:
        self._result["value"] = fn()
      except BaseException as e:  # re-raised in the caller
        self._result["error"] = e
      finally:
        self._done.set()
        if notify is not None:
          notify.put(self)
    threading.Thread(target=target, daemon=True).start()

  @property
  def done(self) -> bool:
    return self._done.is_set()

  def finished_within(self, secs: float) -> bool:
    """Waits up to `secs` for fn() to end; whether it did."""
    return self._done.wait(secs)

  def result(self):
    """fn()'s result, or its exception raised here; only once `done`."""
    if "error" in self._result:
      raise self._result["error"]
    return self._result["value"]

  def wait(self, every_secs: float, on_wait):
    """fn()'s result; on_wait(seconds waited) every `every_secs` until it returns."""
    waited = 0.0
    while not self._done.wait(every_secs):
      waited += every_secs
      on_wait(waited)
    return self.result()


class _CtrlC:
  """SIGINT in the sync chief: a KeyboardInterrupt at once during its duties (evaluation,
  checkpoint), but only a request while a stretch of steps is under way on the ps (`deferred`).

  Python raises KeyboardInterrupt at whichever line the main thread is on, and a stretch has
  two places where that loses track of the ps. Raised after the call that runs the steps has
  started but before the chief waits for it, nothing sends the stop: the ps loop goes on
  applying steps while the chief saves parameters from the middle of them under an older step,
  closes the token queues under the loop's feet and exits with the call still waiting on the
  ps for gradients. Raised after the call has returned but before its steps are recorded, the
  steps it applied are missing from the record and the step count, and the checkpoint named
  after the last recorded step holds the parameters of a later one (an interrupt put there:
  "interrupted at step 30" after 40 steps applied). So within `deferred` the handler only
  records the request and wakes `wait`, which sends the stop once; `deferred` raises
  KeyboardInterrupt on the way out, once the chief has recorded everything the ps applied.
  A second Ctrl-C there raises `Again` at once, for a ps loop that does not stop.
  """

  class Again(KeyboardInterrupt):
    """A second Ctrl-C within a stretch: the chief leaves without waiting for the ps, so what
    it applied is not known and nothing is saved."""

  def __init__(self):
    self.requested = False
    # Wakes `wait` for a Ctrl-C and for the call's end alike. The handler runs in the main
    # thread between two of its bytecodes, maybe inside `wait`'s own get: SimpleQueue.put is
    # reentrant (a Condition's lock, as in threading.Event.set, could deadlock there).
    self.events = queue.SimpleQueue()
    self._deferring = False
    self._previous = {}
    self._kind = KeyboardInterrupt   # SigTerm once a SIGTERM came

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGTERM and self.requested:
      return   # a repeated notice (a launcher passing one on): only a second Ctrl-C insists
    again, self.requested = self.requested, True
    if signum == signal.SIGTERM:
      self._kind = SigTerm
    if not self._deferring:
      raise self._kind
    if again:
      raise self.Again
    self.events.put(signum)

  def install(self) -> None:
    # Only the main thread may install a handler (and Python runs handlers only there); a
    # chief started with SIGINT ignored (in the background of a script) keeps ignoring it.
    # SIGTERM (a preemption notice) takes the same path and ends as SigTerm (status 75).
    if threading.current_thread() is not threading.main_thread():
      return
    for sig in (signal.SIGINT, signal.SIGTERM):
      if signal.getsignal(sig) is not signal.SIG_IGN:
        self._previous[sig] = signal.signal(sig, self._handler)

  def uninstall(self) -> None:
    if self._kind is SigTerm and signal.SIGTERM in self._previous:
      # Preempted and on the way out: a repeated notice (the launcher passes one on while the
      # chief writes its last line) must not kill it before it says where it saved.
      self._previous[signal.SIGTERM] = signal.SIG_IGN
    for sig, previous in self._previous.items():
      # SIG_DFL is 0: test for None (a handler not set from Python), not for truth.
      signal.signal(sig, previous if previous is not None else
                    signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    self._previous = {}

  @contextlib.contextmanager
  def deferred(self):
    """A Ctrl-C inside is raised as KeyboardInterrupt when the body has finished (not when it
    fails: its own error goes first)."""
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = False
    if self.requested:
      raise self._kind

  def wait(self, call: _Call, stop, every_secs: float, on_wait):
    """call's result (a _Call made with notify=self.events). After a Ctrl-C it calls stop()
    once and waits on: the call must return by itself for what it did to be known.
    on_wait(seconds waited) every `every_secs` meanwhile."""
    waited, stopping = 0.0, False
    while True:
      if self.requested and not stopping and not call.done:
        logging.info("[chief] %s: stopping the steps on the ps after the one under way",
                     "SIGTERM" if self._kind is SigTerm else "Ctrl-C")
        stop()
        stopping = True
      try:
        event = self.events.get(timeout=every_secs)
      except queue.Empty:
        waited += every_secs
        on_wait(waited)
        continue
      if event is call:
        return call.result()


def _patiently(fn, every_secs: float, on_wait):
  """fn() run in a daemon thread; on_wait(seconds waited) every `every_secs` until it returns."""
  return _Call(fn).wait(every_secs, on_wait)


# ==================================================================== sync_backup
class SyncChief:
  """Applies the first N gradients of each step; evaluates, checkpoints, writes TensorBoard."""

  def __init__(self, r: Run, shared: SharedState, watch: PSWatch):
    self.r, self.s, self.ps, self.watch = r, shared, shared.ps, watch
    c = r.config.distribute
    self.n, self.num_workers = self.ps.replicas_to_aggregate, self.ps.num_workers
    self.log_workers_every, self.wait_log_secs = c.log_workers_every, c.wait_log_secs
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
          flats, small = [], []
          for j in range(len(s.devices)):
            with tf.device(s.devices[j]), tf.control_dependencies([mask]):  # once committed
              bufs = [s.buffers[w][j].read_value() for w in range(W)]
              flats.append(tf.add_n([mask[w] * bufs[w] for w in range(W)]) / nf)
              small.append(tf.add_n([mask[w] * tf.reduce_sum(tf.square(bufs[w]))
                                     for w in range(W)]))
          big_sq = tf.add_n([tf.reduce_sum(tf.square(f)) for f in flats])
          norm, updates = s.apply(flats, rate, t)
          fingerprint = s.fingerprint(flats)
          with tf.control_dependencies(updates):
            inc = s.global_step.assign_add(1, read_value=False)
          with tf.control_dependencies([inc]):
            new = s.global_step.read_value()
            published = [tf.raw_ops.QueueEnqueueV2(handle=q, components=[new]) for q in s.tokens]
          with tf.control_dependencies(published):
            return tf.stack([norm, tf.add_n(small), big_sq, fingerprint])

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
        tf.raw_ops.QueueDequeueUpToV2(handle=s.commits, n=n, component_types=ps_lib.COMMIT_TYPES)
        for q in s.tokens:
          tf.raw_ops.QueueDequeueUpToV2(handle=q, n=tf.raw_ops.QueueSizeV2(handle=q),
                                        component_types=[tf.int64])
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
    self._ctrl_c = _CtrlC()
    self._drain, self._first_tokens, self._close = drain, first_tokens, close

  def _initialise_ps(self) -> None:
    """Puts the chief's (fresh or restored) state on the ps tasks and releases the workers."""
    r, s = self.r, self.s
    s.params.push(r.variables)
    for name, store in s.slots.items():
      store.push(r.optimizer.slots[name])
    for w in range(self.num_workers):
      for j, n in enumerate(s.sizes):
        s.buffers[w][j].assign(tf.zeros([max(n, 1)]))
    s.lr_decay.assign(r.learning_rate.decay)
    s.set_fingerprint_vectors()
    s.committed.assign(tf.fill([self.num_workers], tf.constant(-1, tf.int64)))
    self._drain()
    s.global_step.assign(r.start)
    s.mark_started()
    self._first_tokens(tf.constant(r.start, tf.int64))
    write_step_graph(r, s)   # while the workers compute the first step
    logging.info("[chief] state on %d ps task(s) (%s MB each); N=%d of %d workers per step",
                 len(s.devices), "/".join(f"{b / 2**20:.1f}" for b in s.params.bytes_per_ps),
                 self.n, self.num_workers)

  def _next_duty(self, step: int) -> int:
    """The first step after `step` at which the chief has something to do in between steps: a
    progress line, an evaluation, a checkpoint, a histogram, or the end."""
    r, c = self.r, self.r.config.train
    periods = [p for p in (c.log_every, r.eval_every, c.checkpoint_every, c.histogram_every)
               if p > 0]
    return min([r.total_steps, *((step // p + 1) * p for p in periods)])

  def _steps(self, first: int, count: int):
    """Runs `count` steps from `first` on the ps tasks (steps_on_ps), saying whom it waits for
    while it waits. Called within self._ctrl_c.deferred(): after a Ctrl-C it starts nothing,
    or stops the ps after the step under way, so that what was applied is known.

    Returns [(used, dropped, stats, ps time) per step applied]: used maps each of the N
    workers used to (loss, fingerprint, secs), dropped lists (worker, step of its gradient,
    secs), stats is (grad norm, sum over used |g_w|^2, |mean g|^2, fingerprint of the mean
    applied).
    """
    r = self.r
    if self._ctrl_c.requested:
      return []
    steps = tf.range(first, first + count, dtype=tf.int64)
    rates = tf.broadcast_to(tf.cast(r.learning_rate(steps), tf.float32), [count])
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
    call = _Call(lambda: self._steps_on_ps(tf.constant(self.n), tf.constant(first, tf.int64),
                                           rates, tf.cast(ts, tf.float32)),
                 notify=self._ctrl_c.events)
    out = self._ctrl_c.wait(call, self._stop, 1.0, on_wait)
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

  def train(self) -> dict:
    r, s = self.r, self.s
    config, writers = r.config, r.writers
    self._initialise_ps()
    W = self.num_workers
    used_by, dropped_by = np.zeros(W, np.int64), np.zeros(W, np.int64)
    staleness = []
    noise_every = config.monitor.noise_scale_every
    track_noise = noise_every > 0 and self.n > 1
    noise_scale = NoiseScale(config.monitor.noise_scale_decay)
    pts = r.per_token_scale
    throughput = Throughput(r.start, r.total_steps)
    losses = []
    step = r.start
    t_prev = time.time()
    record = open_step_record(r.workdir, r.start)
    self._ctrl_c.install()
    try:
      while step < r.total_steps:
        # The steps up to the chief's next duty run on the ps in one call; their records,
        # scalars and log lines are written here afterwards, each under its own step.
        # A Ctrl-C from the start of the call to the end of its bookkeeping stops the ps loop
        # and is raised only here, once the chief's record and step agree with the ps (_CtrlC).
        with self._ctrl_c.deferred():
          results = self._steps(step, self._next_duty(step) - step)
          series = collections.defaultdict(list)
          for used, dropped, (norm, small_sq, big_sq, applied), when in results:
            step += 1
            step_secs, t_prev = max(when - t_prev, 0.0), when
            record.write(json.dumps({
                "step": step, "used": sorted(used), "dropped": dropped,
                "secs": round(step_secs, 4),
                "fingerprints": {str(w): fp for w, (_, fp, _) in sorted(used.items())},
                "compute_secs": {str(w): secs for w, (_, _, secs) in sorted(used.items())},
                "applied": float(applied)}) + "\n")
            loss = float(np.mean([loss for loss, _, _ in used.values()]))
            r.check_loss(loss, step)
            losses.append(loss)
            throughput.add(r.words_per_step)
            for w in used:
              used_by[w] += 1
            for w, t, _ in dropped:
              dropped_by[w] += 1
              staleness.append((w, step - 1 - t))   # steps behind when it arrived
            series["step"].append(step)
            series["sync/gradients_used"].append(len(used))
            series["sync/gradients_dropped"].append(len(dropped))
            series["sync/step_secs"].append(step_secs)
            if step % self.log_workers_every == 0 or step == r.start + 1:
              late = ", ".join(f"worker{w} (step {t + 1})" for w, t, _ in dropped)
              logging.info("[chief] step %d used %s%s", step,
                           ", ".join(f"worker{w}" for w in sorted(used)),
                           f"; dropped {late}" if dropped else "")
            if track_noise and step % noise_every == 0:
              writers.scalars("train", step, noise_scale.update(
                  float(small_sq) / self.n / pts ** 2, float(big_sq) / pts ** 2, r.local_batch,
                  r.batch))
          r.optimizer.iterations.assign_add(len(results))
          r.step_var.assign(step)
          writers.scalar_series("train", series.pop("step", []), series)
          record.flush()   # every applied step's record, before the chief's next duty
        if step % config.train.log_every == 0 or step == r.total_steps:
          perf = throughput.report(step)
          rate = r.learning_rate(tf.constant(step - 1, tf.int64))
          r.log_progress(step, float(np.mean(losses)), float(rate), float(norm), perf,
                         throughput.eta_secs)
          losses = []
          writers.scalars("train", step, {
              **{f"sync/used_by/worker{w}": int(used_by[w]) for w in range(W)},
              **{f"sync/dropped_by/worker{w}": int(dropped_by[w]) for w in range(W)},
              "sync/staleness_mean": float(np.mean([lag for _, lag in staleness]))
                                     if staleness else 0.0,
              **{f"sync/staleness/worker{w}": float(np.mean([lag for v, lag in staleness if v == w]))
                 for w in sorted({v for v, _ in staleness})}})
          staleness = []
        if step % config.train.histogram_every == 0:
          s.params.pull(r.variables)
          writers.histograms("train", step, {v.name.split(":")[0]: v for v in r.variables})
        evaluated = step % r.eval_every == 0 and step < r.total_steps
        save = step < r.total_steps and (evaluated or step % config.train.checkpoint_every == 0)
        s.evaluate_and_save(step, evaluated, save)
    except _CtrlC.Again:
      logging.warning("[chief] Ctrl-C again: leaving without waiting for the ps; not saved, "
                      "so a run of the same command resumes at step %d", r.saved_step)
      raise
    except KeyboardInterrupt as e:
      if step > r.saved_step:
        s.evaluate_and_save(step, evaluated=False, save=True)
      if isinstance(e, SigTerm):
        raise preempted(step) from None
      logging.info("interrupted at step %d; run the same command again to resume", step)
      raise
    finally:
      self._ctrl_c.uninstall()
      record.close()
      # Workers blocked on a token see the end and exit. In a thread, waited for 10 s at most:
      # with ps0's host unreachable the call could block, and the error that ended the run
      # (raised after this) goes first.
      closing = _Call(self._close)
      if closing.finished_within(10.0):
        try:
          closing.result()
        except tf.errors.OpError as e:
          logging.info("[chief] could not close the token queues: %s", type(e).__name__)
    logging.info("[chief] gradients used per worker %s, dropped per worker %s",
                 used_by.tolist(), dropped_by.tolist())
    s.params.pull(r.variables)
    s.pull_slots()
    return r.finish(step)


def open_step_record(workdir: str, start: int):
  """STEP_RECORD for appending, holding exactly one record per step up to `start`, the step the
  run resumes at. A chief that died wrote records of steps after its last checkpoint (they are
  recomputed now, with other workers and gradients) and may have lost the last few it had not
  flushed (those steps are lost from the model too): the records after `start` are dropped,
  atomically, so that the file is the history of the run as it resumes."""
  path = os.path.join(workdir, STEP_RECORD)
  if os.path.exists(path):
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
          dropped += 1     # a line cut short by the kill
          continue
        if step <= start and (not kept or step > kept[-1][0]):
          kept.append((step, line if line.endswith("\n") else line + "\n"))
        else:
          dropped += 1
    if dropped:
      logging.info("[chief] %s: dropped %d record(s) of steps after step %d, where the run "
                   "resumes", STEP_RECORD, dropped, start)
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line for _, line in kept)
      os.replace(tmp, path)
  return open(path, "a", encoding="utf-8")


def gradient_function(r: Run, shared: SharedState, worker: int):
  """A ps worker's computation: (flat gradients, loss, new state) of its rows' batch. Its
  random draws (dropout) are a function of (seed, step, worker): a recomputed step draws the
  same."""
  model, variables, pts = r.model, r.variables, r.per_token_scale

  @tf.function(reduce_retracing=True)   # sentence batches vary in length
  def compute(batch, state, step):
    state = _reset(state, batch["reset"])
    with tf.GradientTape() as tape:
      loss, metrics, new_state = model.loss(batch, state, training=True, step=step,
                                            replica=worker)
      scaled = loss * pts
    grads = tape.gradient(scaled, variables)
    return shared.flatten(grads), loss, new_state
  return compute


def write_step_graph(r: Run, shared: SharedState) -> None:
  """The chief writes the workers' step graph (forward and backward on worker 0's rows) to the
  train run as `train_step`, as the all-reduce loop does with the step it runs: it traces the
  function, it does not run it. Only at the first start, like the all-reduce loop."""
  if r.start or not r.writers.enabled:
    return
  num_workers = shared.ps.num_workers
  context = tf.distribute.InputContext(num_input_pipelines=num_workers, input_pipeline_id=0,
                                       num_replicas_in_sync=num_workers)
  try:
    batch = {k: tf.constant(v) for k, v in next(r.stream.replica_windows(0, context)).items()}
    traced = gradient_function(r, shared, 0).get_concrete_function(
        batch, r.model.initial_state(r.local_batch), tf.constant(0, tf.int64))
    r.writers.graph("train", "train_step", traced.graph, r.start)
  except Exception as e:  # noqa: BLE001  (a picture for the Graphs tab: training goes on)
    logging.warning("[chief] the step's graph was not written to TensorBoard: %s", e)


def _raise_sigterm(signum, frame):
  """The async chief's SIGTERM: raised once; a repeated notice must not cut its save short."""
  del frame
  signal.signal(signum, signal.SIG_IGN)
  raise SigTerm


class _Worker:
  """What both kinds of ps worker do: read parameters, compute a gradient on their own rows."""

  def __init__(self, r: Run, shared: SharedState, watch: PSWatch):
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
      for v, value in zip(variables, s.params.read_all()):
        v.assign(value)

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
    """(flat gradients, loss, seconds this worker took for them, injected delay included)."""
    t0 = time.perf_counter()
    if pull:
      self._pull()
    flats, loss, self._state = self._compute(self._batch(step), self._state,
                                             tf.constant(step, tf.int64))
    delay = self.straggler.delay_secs(time.perf_counter() - t0)
    if delay:
      time.sleep(delay)
    return flats, loss, tf.constant(time.perf_counter() - t0, tf.float32)

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

  def __init__(self, r: Run, shared: SharedState, watch: PSWatch):
    super().__init__(r, shared, watch)
    s, me = shared, self.me
    queue = s.tokens[me]

    variables = r.variables

    def newest_token_and_parameters():
      """Blocks for a token, skips to the newest one queued (a late worker jumps ahead), then
      reads the parameters of that step into the local variables."""
      with tf.device(s.devices[0]):
        tok = tf.raw_ops.QueueDequeueV2(handle=queue, component_types=[tf.int64])[0]
        rest = tf.raw_ops.QueueDequeueUpToV2(handle=queue, n=tf.raw_ops.QueueSizeV2(handle=queue),
                                             component_types=[tf.int64])[0]
        newest = tf.reduce_max(tf.concat([[tok], rest], 0))
      with tf.control_dependencies([newest]):
        for v, value in zip(variables, s.params.read_all()):
          v.assign(value)
      return tf.identity(newest)

    def write_and_commit(flats, step, loss, secs):
      """Writes this worker's gradient to its buffers, then commits it for `step`."""
      fingerprint = s.fingerprint(flats)
      writes = []
      for j, flat in enumerate(flats):
        with tf.device(s.devices[j]):
          writes.append(s.buffers[me][j].assign(flat, read_value=False))
      with tf.device(s.devices[0]), tf.control_dependencies(writes):
        mark = s.committed.scatter_update(tf.IndexedSlices(step[None], tf.constant([me])))
      with tf.device(s.devices[0]), tf.control_dependencies([mark]):
        return tf.raw_ops.QueueEnqueueV2(handle=s.commits, components=[
            tf.constant(me, tf.int64), step, loss, secs, fingerprint])

    @tf.function
    def take_token():
      return newest_token_and_parameters()

    @tf.function
    def push_and_take(flats, step, loss, secs):
      """Commits a gradient and waits for the next step, in one call (one round trip)."""
      with tf.control_dependencies([write_and_commit(flats, step, loss, secs)]):
        return newest_token_and_parameters()

    @tf.function
    def skip_tokens():
      with tf.device(s.devices[0]):
        tf.raw_ops.QueueDequeueUpToV2(handle=queue, n=tf.raw_ops.QueueSizeV2(handle=queue),
                                      component_types=[tf.int64])

    self._take_token, self._skip_tokens = take_token, skip_tokens
    self._push_and_take = push_and_take

  def _next_token(self, fn=None) -> int:
    """The next step to compute, from fn() (default: take_token); checks on the chief while it
    waits."""
    def on_wait(secs):
      self._check_chief(secs)
      self.watch.check()
    token = int(_patiently(fn or self._take_token, 1.0, on_wait))
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
          flats, loss, secs = self._gradient(token, pull=not pulled)
          step = tf.constant(token, tf.int64)
          last, pushed = token, pushed + 1
          token = self._next_token(lambda: self._push_and_take(flats, step, loss, secs))
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

  def __init__(self, r: Run, shared: SharedState, watch: PSWatch):
    super().__init__(r, shared, watch)
    s, me = shared, self.me

    @tf.function
    def apply(flats, loss, secs):
      r.learning_rate.decay.assign(s.lr_decay)
      with tf.device(s.devices[0]):
        step = s.global_step.read_value()
      rate = r.learning_rate(step)
      _, updates = s.apply(flats, rate, tf.cast(step + 1, tf.float32))
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
      flats, loss, secs = self._gradient(cursor)
      cursor += 1
      if not self.s.started():   # the chief stopped the run early (preempted, interrupted)
        exit_now(f"[{self.name}] the chief stopped training at step {int(self.s.read_step())} "
                 f"of {self.r.total_steps} (preempted or interrupted); applied {applied} "
                 "gradients. Relaunch the cluster to resume", EXIT_PREEMPTED)
      step = int(self._apply(flats, loss, secs))
      applied += 1
      if time.monotonic() - last_check > 2.0:
        try:
          self._check_chief()
        except ChiefGoneError as e:
          exit_now(str(e), e.exit_status)
        last_check = time.monotonic()
    logging.info("[%s] applied %d gradients; training reached step %d", self.name, applied, step)


class AsyncChief:
  """Watches the global step: logs, evaluates and checkpoints as it passes each boundary."""

  def __init__(self, r: Run, shared: SharedState, watch: PSWatch):
    self.r, self.s, self.watch = r, shared, watch

  def train(self) -> dict:
    r, s = self.r, self.s
    config, writers = r.config, r.writers
    s.params.push(r.variables)
    for name, store in s.slots.items():
      store.push(r.optimizer.slots[name])
    s.lr_decay.assign(r.learning_rate.decay)
    s.global_step.assign(r.start)
    s.mark_started()
    write_step_graph(r, s)
    logging.info("[chief] state on %d ps task(s); %d asynchronous workers", len(s.devices),
                 s.ps.num_workers)

    @tf.function
    def take_commits():
      with tf.device(s.devices[0]):
        return tf.raw_ops.QueueDequeueUpToV2(
            handle=s.commits, n=tf.raw_ops.QueueSizeV2(handle=s.commits),
            component_types=ps_lib.COMMIT_TYPES)

    throughput = Throughput(r.start, r.total_steps)
    step, seen = r.start, r.start
    losses, by_worker = [], collections.Counter()
    previous = (signal.signal(signal.SIGTERM, _raise_sigterm)
                if threading.current_thread() is threading.main_thread() else None)
    try:
      while step < r.total_steps:
        time.sleep(0.05)
        workers, _, loss, _, _ = (t.numpy() for t in take_commits())
        losses.extend(loss.tolist())
        by_worker.update(workers.tolist())
        step = min(int(s.read_step()), r.total_steps)
        throughput.add(r.words_per_step * (step - seen))
        boundaries = range(seen + 1, step + 1)
        seen = step
        if any(b % config.train.log_every == 0 for b in boundaries) or step == r.total_steps:
          perf = throughput.report(step)
          if losses:
            r.check_loss(float(np.mean(losses)), step)
            r.log_progress(step, float(np.mean(losses)),
                           float(r.learning_rate(tf.constant(step, tf.int64))), 0.0, perf,
                           throughput.eta_secs)
          writers.scalars("train", step, {f"async/applied_by/worker{w}": n
                                          for w, n in by_worker.items()})
          losses = []
        evaluated = any(b % r.eval_every == 0 for b in boundaries) and step < r.total_steps
        save = step < r.total_steps and (
            evaluated or any(b % config.train.checkpoint_every == 0 for b in boundaries))
        r.step_var.assign(step)   # the workers count steps on the ps; checkpoints need it here
        s.evaluate_and_save(step, evaluated, save)
    except KeyboardInterrupt as e:
      # Stop the workers first (they watch the started marker), so that the parameters saved
      # are those of the step recorded: updates in flight still land (at most one a worker).
      s.mark_stopped()
      step = s.settled_step()
      r.step_var.assign(step)
      s.evaluate_and_save(step, evaluated=False, save=True)
      if isinstance(e, SigTerm):
        raise preempted(step) from None
      raise
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    r.step_var.assign(step)
    s.params.pull(r.variables)
    s.pull_slots()
    logging.info("[chief] updates applied per worker: %s", dict(sorted(by_worker.items())))
    return r.finish(step)
