"""A blocking call run in a daemon thread, so that the main thread stays free to watch it.

The parameter-server chiefs and workers block in calls to the ps (a dequeue that waits for a
gradient or a token). Run on the main thread, such a call could not be interrupted by Ctrl-C,
could not check on the other tasks while it waits, and would hold a process that gives up at
exit; run here, it can.
"""
import queue
import threading


class Call:
  """fn() run in a daemon thread, waited for with `wait`.

  A daemon thread, so that a process that gives up (the chief is gone) is not held at exit by
  a call still blocked on the ps; and the main thread stays free to take a KeyboardInterrupt
  and wait again. Completion is an Event, not Thread.join: a join interrupted by
  KeyboardInterrupt can leave the thread looking finished while it still runs (CPython 3.11).
  With `notify`, the call also puts itself there when it ends (see Interrupts.wait).
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


def patiently(fn, every_secs: float, on_wait):
  """fn() run in a daemon thread; on_wait(seconds waited) every `every_secs` until it returns."""
  return Call(fn).wait(every_secs, on_wait)
