"""Optimizers and learning-rate schedules.

The learning rate at a step is

    lr = base_lr × (global_batch / base_batch if scale_lr_with_batch)   linear scaling (Goyal et al. §2.1)
         × min(1, (step + 1) / warmup_steps)                           gradual warmup (Goyal et al. §2.2)
         × decay                                                       plateau decay (Kim et al. §4)

`decay` is a variable (checkpointed): the plateau schedule multiplies it by `plateau_factor`
after an evaluation whose perplexity improved on the best so far by less than
`plateau_threshold`, as Kim et al. halve their rate when validation perplexity stalls.
"""
import tensorflow as tf

from tfsys.errors import UserError

OPTIMIZERS = ("sgd", "adagrad", "adam")
SCHEDULES = ("constant", "plateau")


def _dedup(grad: tf.IndexedSlices) -> tf.IndexedSlices:
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

  def build(self, variables):
    self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
    for slot in self.slot_names:
      self.slots[slot] = [tf.Variable(tf.fill(v.shape, self._slot_init(slot)), trainable=False,
                                      name=f"{v.name.split(':')[0]}_{slot}") for v in variables]

  def _slot_init(self, slot):
    return 0.0

  def apply(self, grads, variables, learning_rate):
    strategy = tf.distribute.get_strategy()
    t = tf.cast(self.iterations + 1, tf.float32)
    for k, (g, v) in enumerate(zip(grads, variables)):
      if g is None:
        continue
      slots = [self.slots[s][k] for s in self.slot_names]
      strategy.extended.update(v, self._update, args=(g, learning_rate, t, *slots), group=False)
    self.iterations.assign_add(1)

  def _update(self, var, grad, lr, t, *slots):
    raise NotImplementedError


class SGD(Optimizer):
  """v -= lr * g, or with momentum μ: m = μ m + g; v -= lr * m."""

  def __init__(self, config):
    super().__init__(config, "sgd")
    self.slot_names = ("momentum",) if config.momentum else ()

  def _update(self, var, grad, lr, t, *slots):
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

  def _update(self, var, grad, lr, t, acc):
    if isinstance(grad, tf.IndexedSlices):
      grad = _dedup(grad)
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

  def _update(self, var, grad, lr, t, m, v):
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
      if float(self.best_eval.numpy()) - perplexity < self.config.plateau_threshold:
        self.decay.assign(self.decay * self.config.plateau_factor)
        lowered = True
    self.best_eval.assign(min(float(self.best_eval.numpy()), perplexity))
    return lowered
