"""Training: the loop, optimizers and schedules, checkpoints, the workdir."""
from tfsys.train.loop import train_and_evaluate
from tfsys.train.run import DivergedError, NonFiniteLossError

__all__ = ["DivergedError", "NonFiniteLossError", "train_and_evaluate"]
