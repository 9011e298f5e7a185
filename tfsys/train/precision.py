"""train.precision: the dtype a training step's matmuls compute in.

float32 (the default) computes everything in float32. bfloat16 is mixed precision: the
variables, their optimizer slots, the LSTM gates and state and the loss stay float32, the LSTMs'
and both softmaxes' matmuls take bf16 operands (models/layers/lstm.py, models/sharded.py,
models/layers/softmax.py; the char CNN stays float32). bf16 has float32's
exponent range, so no loss scaling is needed; its 8-bit mantissa costs precision in each
product, not range. It pays where the hardware multiplies bf16 natively (x86 CPUs with
AVX512-BF16 or AMX, recent GPUs); elsewhere TensorFlow emulates it, slower than float32.
float16 (for GPUs) computes the same matmuls in float16, whose range is narrow: its gradients
are kept from underflowing by dynamic loss scaling (`LossScale`, in the all-reduce backends).
Evaluation, sampling and exports compute in float32 whatever a run trained with.
"""
import tensorflow as tf
from absl import logging

from tfsys.distribute.backends import PS_BACKENDS
from tfsys.errors import UserError

PRECISIONS = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}
ALLREDUCE_DTYPES = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def compute_dtype(config) -> tf.DType:
  """The dtype of config.train.precision (configs saved before it existed: float32)."""
  name = config.train.get("precision", "float32")
  if name not in PRECISIONS:
    raise UserError(f"--config.train.precision must be one of {', '.join(PRECISIONS)}, "
                    f"got {name!r}")
  return PRECISIONS[name]


def check(config) -> tf.DType:
  """compute_dtype, and a UserError where the config's model cannot compute in it (before any
  data is read)."""
  dtype = compute_dtype(config)
  if dtype != tf.float32:
    import models   # pylint: disable=import-outside-toplevel
    if not hasattr(models.kind(config.model).model_class(), "compute_dtype"):
      raise UserError(f"--config.train.precision={dtype.name} is implemented for the LSTM LMs; "
                      f"the {config.model.get('name', 'this')} model trains in float32")
  backend = config.distribute.get("backend", "single")
  if dtype == tf.float16 and backend in PS_BACKENDS:
    raise UserError(f"--config.train.precision=float16 with --config.distribute.backend={backend}: "
                    "its loss scaling is implemented in the all-reduce backends (single, "
                    "mirrored, multi_worker); the parameter-server backends train in float32 "
                    "or bfloat16")
  return dtype


def allreduce_dtype(config) -> tf.DType:
  """distribute.allreduce_dtype: what the gradients' all-reduce sends (configs saved before it
  existed: float32)."""
  name = config.distribute.get("allreduce_dtype", "float32")
  if name not in ALLREDUCE_DTYPES:
    raise UserError(f"--config.distribute.allreduce_dtype must be one of "
                    f"{', '.join(ALLREDUCE_DTYPES)}, got {name!r}")
  return ALLREDUCE_DTYPES[name]


def cpu_has_bf16() -> bool:
  """Whether this CPU multiplies bf16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: BF16)."""
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      flags = set()
      for line in f:
        if line.startswith(("flags", "Features")):
          flags.update(line.split(":", 1)[1].split())
  except OSError:
    return False
  return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def apply(model, config) -> tf.DType:
  """Sets the model's compute dtype from config.train.precision; says when it will be slow."""
  dtype = compute_dtype(config)
  if dtype == tf.float32:
    return dtype
  if not hasattr(model, "compute_dtype"):
    raise UserError(f"--config.train.precision={dtype.name} is implemented for the LSTM LMs; "
                    f"the {config.model.get('name', 'this')} model trains in float32")
  gpu = bool(tf.config.list_physical_devices("GPU"))
  if dtype == tf.bfloat16 and not gpu and not cpu_has_bf16():
    logging.warning("train.precision=bfloat16 on a CPU without native bf16 (no AVX512-BF16 or "
                    "AMX): TensorFlow emulates it, so training will be slower than float32")
  if dtype == tf.float16 and not gpu:
    logging.warning("train.precision=float16 without a GPU: TensorFlow's CPU kernels compute "
                    "float16 slowly, so training will be slower than float32 (on CPUs with "
                    "AVX512-BF16 or AMX, bfloat16 is the fast choice)")
  model.compute_dtype = dtype
  return dtype


# A float16 run stops once this many steps in a row were skipped and the loss scale is at its
# floor (LossScale.floor): halving from any scale up to 2^40 reaches 1 within 40 of them, so the
# last of them were skipped where no scaling overflowed: the gradient itself is inf or NaN, and
# skipping would go on for ever (the run would log finite losses and train nothing).
STUCK_SKIPS = 64


class LossScale(tf.Module):
  """Dynamic loss scaling for float16 training (Micikevicius et al. 2018, arXiv:1710.03740).

  float16's smallest normal is 6e-5, and small gradients flowing back through float16 matmuls
  vanish below it. The loss is multiplied by `value` before the backward pass and the float32
  gradients are divided by it after; a step whose gradients overflowed (a global norm that is
  not finite) is skipped (no update; the data moves on) and the scale halved; after `period`
  finite steps in a row it doubles. Starting at 2^15 and doubling every 2,000 steps, as Keras'
  LossScaleOptimizer does. Its variables are checkpointed, so a resumed run goes on with the
  same scale. bfloat16 needs none of this: it has float32's range.
  """

  floor = 1.0   # the scale never halves below this

  def __init__(self, initial: float = 2.0 ** 15, period: int = 2000):
    super().__init__(name="loss_scale")
    self.period = period
    self.value = tf.Variable(initial, dtype=tf.float32, trainable=False, name="value")
    self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")
    self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")

  def unscale(self, grads):
    """The gradients of the scaled loss, divided by the scale (dense or sparse)."""
    inverse = 1.0 / self.value
    def one(g):
      if g is None:
        return None
      if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * inverse, g.indices, g.dense_shape)
      return g * inverse
    return [one(g) for g in grads]

  def update(self, finite):
    """After a step: finite (a bool tensor) says whether its gradients were. Returns the op."""
    good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
    grow = good >= self.period
    doubled = self.value * 2.0
    grow = grow & tf.math.is_finite(doubled)   # (never to inf, from which halving is no way back)
    value = tf.where(finite, tf.where(grow, doubled, self.value),
                     tf.maximum(self.value * 0.5, self.floor))
    return tf.group(self.value.assign(value),
                    self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good)),
                    self.skipped.assign_add(tf.cast(tf.logical_not(finite), tf.int64)))
