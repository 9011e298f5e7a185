"""Ctrl-C and SIGTERM in a trainer: save the step under way, then exit (130, or 75 preempted).

Kubernetes, Slurm and cloud spot VMs send SIGTERM some seconds before they kill a task; a user
presses Ctrl-C. Either way the trainer saves the last step it completed and says how to resume,
and the relaunch resumes at exactly that step. One handler (`Interrupts`) serves every backend;
where the signal may act differs:

  all-reduce (single, mirrored,  `agreed`: the signal is a request; the step under way finishes
  multi_worker)                  and the flag rides the next step's one all-reduce, so every
                                 worker of a multi_worker job learns of any worker's notice at
                                 the same step and all save it together (a save there is
                                 collective). TensorFlow's PreemptionCheckpointHandler reaches
                                 the same agreement through the coordination service.
  sync_backup chief              within a stretch of steps on the ps (`deferred`) a request stops
                                 the ps loop after the step under way (`wait`), which is recorded
                                 and saved; its workers then exit 75 (the token queues closed
                                 early).
  async_ps chief                 the same; on the way out the chief stops the workers (they
                                 watch a marker on ps0), waits for the global step to settle and
                                 saves.
  sync_backup, async_ps worker   exits at once (tfsys/train/ps/workers.py): it holds no state (a
                                 gradient in flight is not committed).
  ps task                        serves on until the chief is gone (it saves from the ps), at
                                 most 60 s, then exits 75 (tfsys/train/ps/state.py).

Why deferral matters on the ps: Python raises KeyboardInterrupt at whichever line the main
thread is on, and a stretch has two places where that loses track of the ps. Raised after the
call that runs the steps has started but before the chief waits for it, nothing sends the stop:
the ps loop goes on applying steps while the chief saves parameters from the middle of them
under an older step, closes the token queues under the loop's feet and exits with the call still
waiting on the ps for gradients. Raised after the call has returned but before its steps are
recorded, the steps it applied are missing from the record and the step count, and the
checkpoint named after the last recorded step holds the parameters of a later one. So within
`deferred` the handler only records the request and wakes `wait`, which sends the stop once. A
second Ctrl-C there raises `Again` at once, for a loop that does not stop.

Outside the calls, in the controller's duties (a progress line, an evaluation, a checkpoint),
a signal is a request too, acted on once they are done (saved by a chief; passed on with the
next step by the all-reduce backends); a second Ctrl-C raises `Again` there on every backend.
Raised at whichever line the main thread is on, it lands inside eager TensorFlow calls: the
async_ps chief once crashed with a segmentation fault in a summary write when the launcher's
SIGTERM arrived there.
"""
import contextlib
import queue
import signal
import threading

from absl import logging

from tfsys.errors import PreemptedError


class SigTerm(KeyboardInterrupt):
  """SIGTERM where Ctrl-C's clean-up path applies: the same save, then status 75 instead of 130
  (tfsys.cli)."""


def preempted(step: int, saved: bool = True) -> PreemptedError:
  return PreemptedError(
      f"preempted (SIGTERM) at step {step}: " + ("saved; " if saved else "")
      + f"run the same command to resume at step {step}")


class Interrupts:
  """SIGINT and SIGTERM in a trainer's main thread, as requests or as KeyboardInterrupt.

  agreed: SIGTERM is only ever a request (`requested`), which the executor passes to every
  worker with the next step (the all-reduce backends).
  """

  class Again(KeyboardInterrupt):
    """A second Ctrl-C within `deferred`: leave without waiting for the call under way, so what
    it applied is not known and nothing is saved."""

  def __init__(self, agreed: bool = False):
    self.agreed = agreed
    self.requested = False
    self.kind = KeyboardInterrupt   # SigTerm once a SIGTERM came
    # Wakes `wait` for a signal and for the call's end alike. The handler runs in the main
    # thread between two of its bytecodes, maybe inside `wait`'s own get: SimpleQueue.put is
    # reentrant (a Condition's lock, as in threading.Event.set, could deadlock there).
    self.events = queue.SimpleQueue()
    self._deferring = self._insist = False
    self._previous = {}

  def _handler(self, signum, frame):
    del frame
    if signum == signal.SIGTERM and self.requested:
      return   # a repeated notice (a launcher passing one on): only a second Ctrl-C insists
    again, self.requested = self.requested, True
    if signum == signal.SIGTERM:
      self.kind = SigTerm
      if self.agreed:
        return   # rides the next step's all-reduce
    if not self._deferring:
      raise self.kind
    if again and (self._insist or not self.agreed):
      # (An all-reduce call always returns, and Python runs no handler until it has: there a
      # second signal stays a request, and the step is saved.)
      raise self.Again
    self.events.put(signum)

  def install(self) -> "Interrupts":
    # Only the main thread may install a handler (and Python runs handlers only there); a
    # trainer started with SIGINT ignored (in the background of a script) keeps ignoring it.
    if threading.current_thread() is not threading.main_thread():
      return self
    for sig in (signal.SIGINT, signal.SIGTERM):
      if signal.getsignal(sig) is not signal.SIG_IGN:
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def uninstall(self) -> None:
    if self.kind is SigTerm and signal.SIGTERM in self._previous:
      # Preempted and on the way out: a repeated notice (the launcher passes one on while the
      # trainer writes its last line) must not kill it before it says where it saved.
      self._previous[signal.SIGTERM] = signal.SIG_IGN
    for sig, previous in self._previous.items():
      # SIG_DFL is 0: test for None (a handler not set from Python), not for truth.
      signal.signal(sig, previous if previous is not None else
                    signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    self._previous = {}

  @contextlib.contextmanager
  def deferred(self, raise_on_exit: bool = True, insist: bool = False):
    """A signal inside only records the request; with raise_on_exit it is raised as
    KeyboardInterrupt (or SigTerm) when the body has finished (not when it fails: its own error
    goes first). A second Ctrl-C raises `Again` at once where the stop is not agreed, or
    everywhere with `insist` (a body outside any all-reduce call: the controller's duties)."""
    self._deferring, self._insist = True, insist
    try:
      yield
    finally:
      self._deferring = self._insist = False
    if raise_on_exit and self.requested:
      raise self.kind

  def stop_error(self, step: int) -> BaseException:
    """What a trainer raises once it saved `step` after an agreed stop: Ctrl-C's own
    KeyboardInterrupt, or preempted (its own SIGTERM, or another worker's)."""
    if self.requested and self.kind is KeyboardInterrupt:
      return KeyboardInterrupt()
    return preempted(step)

  def wait(self, call, stop, every_secs: float, on_wait):
    """call's result (a calls.Call made with notify=self.events). After a request it calls
    stop() once and waits on: the call must return by itself for what it did to be known.
    on_wait(seconds waited) every `every_secs` meanwhile."""
    waited, stopping = 0.0, False
    while True:
      if self.requested and not stopping and not call.done:
        logging.info("[chief] %s: stopping the steps on the ps after the one under way",
                     "SIGTERM" if self.kind is SigTerm else "Ctrl-C")
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
