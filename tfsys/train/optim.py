"""Optimizers and learning-rate schedules.

The learning rate at a step is

    lr = base_lr × (global_batch / base_batch if scale_lr_with_batch)   linear scaling (Goyal et al. §2.1)
         × min(1, (step + 1) / warmup_steps)                           gradual warmup (Goyal et al. §2.2)
         × decay                                                       plateau decay (Kim et al. §4)

`decay` is a variable (checkpointed): the plateau schedule multiplies it by `plateau_factor`
after an evaluation whose perplexity improved on the best so far by less than
`plateau_threshold`, as Kim et al. halve their rate when validation perplexity stalls.
"""
import keras
import tensorflow as tf

from tfsys.errors import UserError

OPTIMIZERS = ("sgd", "adagrad", "adam")
SCHEDULES = ("constant", "plateau")


def make_optimizer(optim_config) -> keras.optimizers.Optimizer:
  """A Keras 3 optimizer. Build it (`optimizer.build(vars)`) inside the strategy scope."""
  c = optim_config
  if c.name == "sgd":
    return keras.optimizers.SGD(c.learning_rate, momentum=c.momentum)
  if c.name == "adagrad":
    return keras.optimizers.Adagrad(c.learning_rate, initial_accumulator_value=c.initial_accumulator)
  if c.name == "adam":
    return keras.optimizers.Adam(c.learning_rate)
  raise UserError(f"unknown optimizer {c.name!r} (--config.optim.name): choose one of {OPTIMIZERS}")


class LearningRate(tf.Module):
  """The schedule above; `__call__(step)` is a graph op, `after_eval(ppl)` runs in Python."""

  def __init__(self, optim_config, global_batch: int):
    super().__init__(name="learning_rate")
    c = optim_config
    if c.schedule not in SCHEDULES:
      raise UserError(f"unknown schedule {c.schedule!r} (--config.optim.schedule): "
                      f"choose one of {SCHEDULES}")
    if c.learning_rate <= 0:
      raise UserError(f"--config.optim.learning_rate must be positive, got {c.learning_rate}")
    self.config = c
    scale = global_batch / c.base_batch if c.scale_lr_with_batch else 1.0
    self.peak = c.learning_rate * scale
    self.decay = tf.Variable(1.0, trainable=False, name="decay")
    self.best_eval = tf.Variable(float("inf"), trainable=False, name="best_eval")

  def __call__(self, step):
    lr = self.peak * self.decay
    if self.config.warmup_steps:
      frac = tf.cast(step + 1, tf.float32) / float(self.config.warmup_steps)
      lr *= tf.minimum(1.0, frac)
    return lr

  def after_eval(self, perplexity: float) -> bool:
    """Updates the plateau decay; returns True if the rate was lowered."""
    lowered = False
    if self.config.schedule == "plateau":
      if float(self.best_eval) - perplexity < self.config.plateau_threshold:
        self.decay.assign(self.decay * self.config.plateau_factor)
        lowered = True
    self.best_eval.assign(min(float(self.best_eval), perplexity))
    return lowered
