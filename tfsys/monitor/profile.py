"""A tf.profiler trace of chosen training steps, for TensorBoard's Profile tab.

`--config.monitor.profile_steps=A,B` traces steps A to B inclusive, numbered from 1 as the
progress lines number them, into the workdir's `train` run: the trace lands in
`train/plugins/profile/<timestamp>/<host>.xplane.pb`, where the profile plugin
(`tensorboard-plugin-profile`) finds it. Only the process that writes TensorBoard (the chief)
traces, and only the steps themselves: the progress lines, evaluations and checkpoints around
step B run after the trace has stopped. Step 1 also traces and compiles the step function, so
a trace of the steady state starts later (e.g. `10,12`).
"""
import re

import tensorflow as tf
from absl import logging

from tfsys.errors import UserError

_FORM = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*")


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """(A, B) from "A,B" with 1 <= A <= B; None for "" (off)."""
  if not spec or not spec.strip():
    return None
  match = _FORM.fullmatch(spec)
  first, last = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
  if not match or first < 1 or last < first:
    raise UserError(f"--config.monitor.profile_steps={spec!r} is not A,B with 1 <= A <= B "
                    "(steps numbered from 1, e.g. 10,12 traces steps 10 to 12; \"\" = off)")
  return first, last


class StepProfiler:
  """Starts tf.profiler before step A and stops it after step B; the loop calls it around each step."""

  def __init__(self, spec: str, logdir: str):
    self.steps = parse_profile_steps(spec)   # a bad spec fails here, before any training work
    self.logdir = logdir
    self._active, self._last = False, 0

  def unsupported(self, backend: str) -> None:
    """For a loop that does not trace (the parameter-server backends): says so if asked to."""
    if self.steps:
      logging.warning("monitor.profile_steps=%d,%d is not traced under the %s backend (only "
                      "single, mirrored and multi_worker trace steps): no profile", *self.steps,
                      backend)
      self.steps = None

  def begin(self, start: int, enabled: bool = True) -> None:
    """Before the first step of this run; `start` steps were done before it (a resumed run)."""
    if not self.steps:
      return
    first, last = self.steps
    if not enabled:
      self.steps = None
    elif start >= first:
      logging.info("monitor.profile_steps=%d,%d: this run resumes at step %d, past step %d: "
                   "no profile (choose steps after %d to trace this run)", first, last,
                   start + 1, first, start)
      self.steps = None

  def before(self, step: int) -> None:
    """Before step `step` (1-based) runs."""
    if self.steps and step == self.steps[0]:
      tf.profiler.experimental.start(self.logdir)
      self._active = True
      logging.info("profiling steps %d to %d into %s", *self.steps, self.logdir)

  def after(self, step: int) -> None:
    """After step `step` (1-based) finished (its loss has been read back)."""
    self._last = step
    if self._active and step >= self.steps[1]:
      self.stop()

  def stop(self) -> None:
    """Writes the trace if one is running (also at the end of a run short of step B, on errors)."""
    if self._active:
      self._active = False
      tf.profiler.experimental.stop()
      logging.info("profile of steps %d to %d written to %s (TensorBoard's Profile tab)",
                   self.steps[0], max(self._last, self.steps[0]), self.logdir)
