"""Optimizers and learning-rate schedules.

The learning rate at a step is

    lr = base_lr × (global_batch / base_batch if scale_lr_with_batch)   linear scaling (Goyal et al. §2.1)
         × min(1, (step + 1) / warmup_steps)                           gradual warmup (Goyal et al. §2.2)
         × decay                                                       plateau decay (Kim et al. §4)

`decay` is a variable (checkpointed): the plateau schedule multiplies it by `plateau_factor`
after an evaluation whose perplexity improved on the best so far by less than
`plateau_threshold`, as Kim et al. halve their rate when validation perplexity stalls, but never
takes base_lr × scale × decay below `min_learning_rate`. A run whose rate reached that floor
goes on at it to the end (train.num_steps or num_epochs), saying once that it got there: it may
still improve slowly, and stopping is the step count's job.
"""
import math

import numpy as np
import tensorflow as tf
from absl import logging

from models.sharded import ShardedTable, variables_of
from tfsys.errors import UserError

OPTIMIZERS = ("sgd", "adagrad", "adam")
SCHEDULES = ("constant", "plateau")
# The default of optim.min_learning_rate (configs/common.py), also for configs written before
# the field existed. Absolute: the field is one number for every config and optimizer. 1e-6 is
# 20 halvings below SGD's 1.0 and 10 below Adam's 1e-3, where these runs have long stopped
# improving, yet it is not 0, which a float32 rate halved without a floor reaches after ~150
# stalls, to train on doing nothing. 0 gives back the schedule without a floor.
MIN_LEARNING_RATE = 1e-6


def sum_duplicate_rows(grad: tf.IndexedSlices) -> tf.IndexedSlices:
  """Sums the rows of a sparse gradient that share an index (as the dense gradient would)."""
  unique, pos = tf.unique(grad.indices)
  values = tf.math.unsorted_segment_sum(grad.values, pos, tf.shape(unique)[0])
  return tf.IndexedSlices(values, unique, grad.dense_shape)


class Optimizer(tf.Module):
  """Gradient descent on raw tf.Variables, distributed like them.

  `build(variables)` creates the slots (inside the strategy scope, so they are placed and
  mirrored like their variables). `apply(grads, variables, lr)` runs in cross-replica context
  on gradients that are already all-reduced: the training loop reduces and clips them itself,
  so that clipping sees the global gradient and nothing is reduced twice. Sparse (IndexedSlices)
  gradients of embedding tables update only the rows they touch.
  """
  slot_names: tuple = ()

  def __init__(self, config, name):
    super().__init__(name=name)
    self.config = config
    self.slots = {}

  def build(self, params):
    """params: the model's parameters (models/variables.py `parameters`): variables, or tables
    split by rows over devices, whose slots are split alike (a checkpoint holds each slot whole,
    as it holds the table, so it restores into any split)."""
    self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
    for slot in self.slot_names:
      self.slots[slot] = [self._slot(p, slot) for p in params]

  def _slot(self, param, slot):
    name = f"{param.name.split(':')[0]}_{slot}"
    if isinstance(param, ShardedTable):
      return param.like(name, self._slot_init(slot))
    with tf.device(param.device):   # (a placed model's variable: its slot beside it)
      return tf.Variable(tf.fill(param.shape, self._slot_init(slot)), trainable=False, name=name)

  def _slot_init(self, slot):
    return 0.0

  def apply(self, grads, variables, learning_rate):
    """grads and variables: flat lists (a sharded table's shards one by one)."""
    strategy = tf.distribute.get_strategy()
    t = tf.cast(self.iterations + 1, tf.float32)
    slots = {s: variables_of(self.slots[s]) for s in self.slot_names}
    for k, (g, v) in enumerate(zip(grads, variables)):
      if g is None:
        continue
      args = (g, learning_rate, t, *[slots[s][k] for s in self.slot_names])
      if isinstance(v, tf.distribute.DistributedValues):
        strategy.extended.update(v, self.update, args=args, group=False)
      else:   # a placed model's own variable (the update runs where the variable lives)
        self.update(v, *args)
    self.iterations.assign_add(1)

  def update(self, var, grad, lr, t, *slots):
    """One variable's update: var and its slots (in slot_names order) from grad (a Tensor, or
    IndexedSlices of the rows it touches), at learning rate lr and step count t (1-based, for
    Adam's bias correction). Element-wise: applied to a flat concatenation of several variables
    it is their updates (the parameter-server chiefs use that). Returns the variable's update op."""
    raise NotImplementedError


class SGD(Optimizer):
  """v -= lr * g, or with momentum μ: m = μ m + g; v -= lr * m."""

  def __init__(self, config):
    super().__init__(config, "sgd")
    self.slot_names = ("momentum",) if config.momentum else ()

  def update(self, var, grad, lr, t, *slots):
    if not slots and isinstance(grad, tf.IndexedSlices):
      return var.scatter_sub(tf.IndexedSlices(lr * grad.values, grad.indices, grad.dense_shape))
    grad = tf.convert_to_tensor(grad)
    if slots:
      (m,) = slots
      m.assign(self.config.momentum * m + grad)
      grad = m
    return var.assign_sub(lr * grad)


class Adagrad(Optimizer):
  """acc += g²; v -= lr * g / (√acc + ε), accumulators starting at `initial_accumulator`
  (Duchi et al. 2011; Jozefowicz et al. 2016 start them at 1.0)."""
  slot_names = ("accumulator",)
  epsilon = 1e-7

  def __init__(self, config):
    super().__init__(config, "adagrad")

  def _slot_init(self, slot):
    return float(self.config.initial_accumulator)

  def update(self, var, grad, lr, t, acc):
    if isinstance(grad, tf.IndexedSlices):
      grad = sum_duplicate_rows(grad)
      acc.scatter_add(tf.IndexedSlices(tf.square(grad.values), grad.indices, grad.dense_shape))
      step = lr * grad.values / (tf.sqrt(tf.gather(acc, grad.indices)) + self.epsilon)
      return var.scatter_sub(tf.IndexedSlices(step, grad.indices, grad.dense_shape))
    acc.assign_add(tf.square(grad))
    return var.assign_sub(lr * grad / (tf.sqrt(acc) + self.epsilon))


class Adam(Optimizer):
  """Kingma & Ba 2015 with bias correction; β1 = 0.9, β2 = 0.999, ε = 1e-7."""
  slot_names = ("m", "v")
  beta1, beta2, epsilon = 0.9, 0.999, 1e-7

  def __init__(self, config):
    super().__init__(config, "adam")

  def update(self, var, grad, lr, t, m, v):
    grad = tf.convert_to_tensor(grad)
    m.assign(self.beta1 * m + (1 - self.beta1) * grad)
    v.assign(self.beta2 * v + (1 - self.beta2) * tf.square(grad))
    m_hat = m / (1 - self.beta1 ** t)
    v_hat = v / (1 - self.beta2 ** t)
    return var.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + self.epsilon))


def make_optimizer(optim_config) -> Optimizer:
  """An optimizer by name. Call `build(variables)` inside the strategy scope."""
  kinds = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}
  if optim_config.name not in kinds:
    raise UserError(f"unknown optimizer {optim_config.name!r} (--config.optim.name): "
                    f"choose one of {OPTIMIZERS}")
  return kinds[optim_config.name](optim_config)


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
    self.min_rate = float(c.get("min_learning_rate", MIN_LEARNING_RATE))
    if not (math.isfinite(self.min_rate) and self.min_rate >= 0):
      raise UserError(f"--config.optim.min_learning_rate must be >= 0 (0 = no floor), "
                      f"got {self.min_rate}")
    # Only the plateau schedule lowers the rate: under a constant one the floor is unused, and
    # its default must not reject a rate set below it.
    if c.schedule == "plateau" and self.min_rate > self.peak:
      scaled = f" (scaled with the batch: × {scale:g})" if scale != 1.0 else ""
      raise UserError(f"--config.optim.min_learning_rate={self.min_rate:g} is above the peak "
                      f"learning rate {self.peak:g}{scaled}, where the plateau schedule starts: "
                      "give a floor at most the peak")
    # The floor as a decay, rounded to float32 once so that the variable holds it exactly.
    self.min_decay = float(np.float32(min(self.min_rate / self.peak, 1.0)))
    self._floor_logged = False
    # The checkpoint holds these two variables only, as before the floor existed.
    self.decay = tf.Variable(1.0, trainable=False, name="decay")
    self.best_eval = tf.Variable(float("inf"), trainable=False, name="best_eval")

  def __call__(self, step):
    # The floor applies here too: a decay restored from a checkpoint written without a floor
    # (one halved to 0, say) trains at the floor from the first step of the resumed run.
    lr = self.peak * tf.maximum(self.decay, self.min_decay)
    if self.config.warmup_steps:
      frac = tf.cast(step + 1, tf.float32) / float(self.config.warmup_steps)
      lr *= tf.minimum(1.0, frac)
    return lr

  def after_eval(self, perplexity: float) -> bool:
    """Updates the plateau decay; returns True if the rate was lowered (False once it is at
    its floor: a stall there changes nothing)."""
    lowered = False
    if self.config.schedule == "plateau":
      if float(self.best_eval.numpy()) - perplexity < self.config.plateau_threshold:
        current = max(float(self.decay.numpy()), self.min_decay)
        new = max(current * self.config.plateau_factor, self.min_decay)
        self.decay.assign(new)
        lowered = new < current
        if new <= self.min_decay and not self._floor_logged:
          self._floor_logged = True
          logging.info("learning rate at its floor %g (--config.optim.min_learning_rate): "
                       "training goes on at it, later plateaus leave it there", self.min_rate)
    self.best_eval.assign(min(float(self.best_eval.numpy()), perplexity))
    return lowered
