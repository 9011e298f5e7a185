"""Distribution backends: a `tf.distribute` strategy the training loop runs its step through.

  single    TensorFlow's default strategy: one device.
  mirrored  MirroredStrategy over this host's GPUs, or, on a machine without GPUs, over
            `num_logical_cpus` logical CPU devices (so data parallelism is testable on a CPU).

The loop is the same for every backend: it reads replica counts from the strategy, slices the
per-replica LSTM state by replica id, and all-reduces gradients itself.
"""
import tensorflow as tf

from tfsys.errors import UserError

BACKENDS = ("single", "mirrored")


def _logical_cpus(n: int) -> list[str]:
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  except RuntimeError:
    pass  # devices already initialised in this process: usable if the count matches
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  if len(devices) != n:
    raise UserError(f"this process already uses {len(devices)} CPU devices; "
                    f"num_logical_cpus={n} must be set before TensorFlow starts (run it as a script)")
  return devices


def make_strategy(distribute_config) -> tf.distribute.Strategy:
  """Call before any TensorFlow op runs: logical devices are fixed at start-up."""
  backend = distribute_config.backend
  if backend == "single":
    return tf.distribute.get_strategy()
  if backend == "mirrored":
    if tf.config.list_physical_devices("GPU"):
      return tf.distribute.MirroredStrategy()
    n = distribute_config.num_logical_cpus
    if n < 1:
      raise UserError(f"--config.distribute.num_logical_cpus must be >= 1, got {n}")
    return tf.distribute.MirroredStrategy(_logical_cpus(n),
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())
  raise UserError(f"unknown distribution backend {backend!r} (--config.distribute.backend); "
                  f"available: {', '.join(BACKENDS)}")
