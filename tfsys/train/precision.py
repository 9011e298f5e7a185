"""train.precision: the dtype a training step's matmuls compute in.

float32 (the default) computes everything in float32. bfloat16 is mixed precision: the
variables, their optimizer slots, the LSTM gates and state and the loss stay float32, the LSTMs'
and the full softmax's matmuls take bf16 operands (models/layers/lstm.py, models/sharded.py;
the char CNN and the sampled softmax stay float32). bf16 has float32's
exponent range, so no loss scaling is needed; its 8-bit mantissa costs precision in each
product, not range. It pays where the hardware multiplies bf16 natively (x86 CPUs with
AVX512-BF16 or AMX, recent GPUs); elsewhere TensorFlow emulates it, slower than float32.
Evaluation, sampling and exports compute in float32 whatever a run trained with.
"""
import tensorflow as tf
from absl import logging

from tfsys.errors import UserError

PRECISIONS = {"float32": tf.float32, "bfloat16": tf.bfloat16}


def compute_dtype(config) -> tf.DType:
  """The dtype of config.train.precision (configs saved before it existed: float32)."""
  name = config.train.get("precision", "float32")
  if name == "float16":
    raise UserError("--config.train.precision=float16 is not available: it needs loss scaling "
                    "and a GPU; use bfloat16 (float32's range, no loss scaling)")
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
  return dtype


def allreduce_dtype(config) -> tf.DType:
  """distribute.allreduce_dtype: what the gradients' all-reduce sends (configs saved before it
  existed: float32)."""
  name = config.distribute.get("allreduce_dtype", "float32")
  if name not in PRECISIONS:
    raise UserError(f"--config.distribute.allreduce_dtype must be one of "
                    f"{', '.join(PRECISIONS)}, got {name!r}")
  return PRECISIONS[name]


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
  if not tf.config.list_physical_devices("GPU") and not cpu_has_bf16():
    logging.warning("train.precision=bfloat16 on a CPU without native bf16 (no AVX512-BF16 or "
                    "AMX): TensorFlow emulates it, so training will be slower than float32")
  model.compute_dtype = dtype
  return dtype
