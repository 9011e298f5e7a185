"""The one training loop: `train_and_evaluate(config, workdir)` for every model and backend.

Resumes by itself: if WORKDIR holds checkpoints it continues from the newest with the step, the
optimizer, the learning-rate decay, the carried LSTM state and the data position (the stream is
a pure function of the step) restored.

The controller (controller.py) owns the cadence; the backend is an executor that runs steps:
allreduce.py for single, mirrored and multi_worker; ps/ for sync_backup and async_ps, whose ps
tasks and workers run loops of their own (they have no cadence: the chief's controller has).
"""
import os

from tfsys.distribute.backends import make_backend
from tfsys.monitor import StepProfiler
from tfsys.placement import placer
from tfsys.train.allreduce import AllReduceExecutor
from tfsys.train.controller import Controller
from tfsys.train.run import NonFiniteLossError, Run

__all__ = ["NonFiniteLossError", "train_and_evaluate"]


def train_and_evaluate(config, workdir: str) -> dict | None:
  """Trains config's model on config's data in workdir; returns the final metrics.

  Returns None in a process that has no results of its own (a parameter-server worker).
  """
  profiler = StepProfiler(config.monitor.profile_steps, os.path.join(workdir, "train"))
  # First: fixes devices and threads.
  backend = make_backend(config.distribute, placed=placer.mode(config) != "none")
  if backend.ps is not None:
    from tfsys.train import ps
    return ps.train(config, workdir, backend, profiler)
  run = Run(config, workdir, backend)
  return Controller(run, AllReduceExecutor(run), profiler).train()
