"""The ps tasks' side: a ps task serves the shared state (`serve`), and every client watches
that the ps tasks are still there (`PSWatch`)."""
import signal
import time

import tensorflow as tf
from absl import logging

from tfsys.distribute import cluster as cluster_lib
from tfsys.errors import EXIT_PREEMPTED, TaskLostError, error_summary, exit_now


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
