"""SIGTERM as a preemption notice: save the step under way, then exit with status 75.

Kubernetes, Slurm and cloud spot VMs send SIGTERM some seconds before they kill a task. A
trainer that saves then loses nothing: the relaunch resumes at exactly the step it stopped at.

  single, mirrored, multi_worker   the signal is a request (`requested`); the step under way
                                   finishes, and the flag rides that step's one all-reduce, so
                                   every worker of a multi_worker job learns of any worker's
                                   notice at the same step and all save it together (a save
                                   there is collective). TensorFlow's PreemptionCheckpointHandler
                                   reaches the same agreement through the coordination service.
  sync_backup chief                like Ctrl-C (ps_loop._CtrlC): the stretch of steps on the ps
                                   stops after the step under way, which is recorded and saved;
                                   its workers then exit 75 (the token queues closed early).
  async_ps chief                   SigTerm is raised; the chief stops the workers (they watch a
                                   marker on ps0), waits for the global step to settle and saves.
  sync_backup, async_ps worker     exits at once: it holds no state (a gradient in flight is not
                                   committed). Under sync_backup the others go on without it.
  ps task                          serves on until the chief is gone (it saves from the ps), at
                                   most 60 s, then exits 75.
"""
import signal
import threading

from tfsys.errors import PreemptedError


class SigTerm(KeyboardInterrupt):
  """SIGTERM where Ctrl-C's clean-up path applies (the ps chiefs): the same save, then status 75
  instead of 130 (tfsys.cli)."""


class Preemption:
  """Records SIGTERM in the main thread as `requested`; the loop reads it between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def install(self) -> "Preemption":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def uninstall(self) -> None:
    if self._previous is not None:
      # Preempted and on the way out: further notices must not cut the last line short.
      signal.signal(signal.SIGTERM, signal.SIG_IGN if self.requested else self._previous)
      self._previous = None


def preempted(step: int, saved: bool = True) -> PreemptedError:
  return PreemptedError(
      f"preempted (SIGTERM) at step {step}: " + ("saved; " if saved else "")
      + f"run the same command to resume at step {step}")
