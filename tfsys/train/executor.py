"""What a backend is to the controller: an executor that runs steps and reports them.

The controller (controller.py) decides *when*: how many steps until the next duty, progress
lines, evaluations, checkpoints, histograms, the noise scale, the stop on a bad loss, the save on
Ctrl-C or SIGTERM, results.json. An executor decides only *how* a step runs on its backend:

  allreduce.AllReduceExecutor   single, mirrored, multi_worker: K steps per tf.function call
  ps.sync_chief.SyncChief       sync_backup's chief: a stretch of steps as one loop on the ps
  ps.async_chief.AsyncChief     async_ps's chief: watches the workers' updates go by

Interface (one line per member):
  max_steps_per_call   steps one `train` call may run (None: any number)
  agreed_stop          whether a SIGTERM is passed to every worker with the next step
  begin()              before the first call: put the state where the steps run
  train(n, interrupts) run n steps (fewer if stopped) -> Stretch; async_ps may run more
  halt()               after an interruption: stop what still runs; the step the
                       variables are at
  to_host(slots)       bring the parameters (and optimizer slots) back to the chief's variables
  after_evaluation()   the evaluation changed the learning-rate decay: pass it on
  state_rows()         every row of the carried LSTM state, for a checkpoint (or None)
  progress_scalars()   the backend's own scalars for a progress line
  end()                after the last call, whatever happened (release the workers)
  lost(error)          an error of a lost peer as one TaskLostError, or None
"""
import dataclasses
from typing import Protocol

import numpy as np


@dataclasses.dataclass
class Stretch:
  """The steps one `train` call ran: start + 1 ... start + steps."""
  start: int
  steps: int
  losses: np.ndarray                # the training loss of each step (async_ps: of each update seen)
  grad_norms: np.ndarray            # per step, before clipping (async_ps: empty)
  learning_rates: np.ndarray        # per step (async_ps: the rate at the last)
  metrics: dict = dataclasses.field(default_factory=dict)   # name -> per-step sums
  noise: tuple | None = None        # per step (|g_small|^2, |g_big|^2) for NoiseScale, or None
  series: dict = dataclasses.field(default_factory=dict)    # name -> per-step scalars
  stopped: bool = False             # a Ctrl-C or SIGTERM stopped it after its last step

  @property
  def end(self) -> int:
    return self.start + self.steps


class Executor(Protocol):
  max_steps_per_call: int | None
  agreed_stop: bool

  def begin(self) -> None: ...
  def train(self, num_steps: int, interrupts) -> Stretch: ...
  def halt(self) -> int: ...
  def to_host(self, slots: bool) -> None: ...
  def after_evaluation(self) -> None: ...
  def state_rows(self): ...
  def progress_scalars(self) -> dict: ...
  def end(self) -> None: ...
  def lost(self, error: Exception): ...
