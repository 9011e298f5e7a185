"""Training: the loop, optimizers and schedules, checkpoints, the workdir."""
from tfsys.train.loop import NonFiniteLossError, train_and_evaluate

__all__ = ["NonFiniteLossError", "train_and_evaluate"]
