"""Distribution backends: a `tf.distribute` strategy the training loop runs its step through.

  single        TensorFlow's default strategy: one device.
  mirrored      MirroredStrategy over this host's GPUs, or, on a machine without GPUs, over
                `num_logical_cpus` logical CPU devices (so data parallelism is testable on a CPU).
  multi_worker  MultiWorkerMirroredStrategy: synchronous all-reduce across the worker
                processes `TF_CONFIG` describes (scripts/launch_local.py starts them locally).

The loop is the same for every backend: it reads replica counts from the strategy, slices the
per-replica LSTM state by replica id, and all-reduces gradients itself.
"""
import dataclasses

import tensorflow as tf

from tfsys.distribute import cluster as cluster_lib
from tfsys.errors import UserError

BACKENDS = ("single", "mirrored", "multi_worker")


@dataclasses.dataclass
class Backend:
  strategy: tf.distribute.Strategy
  cluster: cluster_lib.Cluster | None = None

  @property
  def is_chief(self) -> bool:
    """Whether this process writes summaries, checkpoints and config (one per cluster)."""
    return self.cluster is None or self.cluster.is_chief

  @property
  def task_name(self) -> str:
    return self.cluster.name if self.cluster else "local"


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


def make_backend(distribute_config) -> Backend:
  """Call before any TensorFlow op runs: devices and threads are fixed at start-up."""
  c = distribute_config
  if c.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(c.intra_op_threads)
  backend = c.backend
  if backend == "single":
    return Backend(tf.distribute.get_strategy())
  if backend == "mirrored":
    if tf.config.list_physical_devices("GPU"):
      return Backend(tf.distribute.MirroredStrategy())
    if c.num_logical_cpus < 1:
      raise UserError(f"--config.distribute.num_logical_cpus must be >= 1, got {c.num_logical_cpus}")
    return Backend(tf.distribute.MirroredStrategy(
        _logical_cpus(c.num_logical_cpus), cross_device_ops=tf.distribute.ReductionToOneDevice()))
  if backend == "multi_worker":
    cluster = cluster_lib.from_env()
    if cluster is None:
      raise UserError("the multi_worker backend needs TF_CONFIG describing the cluster; "
                      "scripts/launch_local.py --num_workers=K sets it for a local cluster")
    if set(cluster.jobs) - {"chief", "worker"}:
      raise UserError(f"TF_CONFIG for multi_worker may only have chief and worker jobs, "
                      f"not {sorted(set(cluster.jobs) - {'chief', 'worker'})}")
    if sum(len(v) for v in cluster.jobs.values()) < 2:
      raise UserError("multi_worker with a single task: use --config.distribute.backend=single "
                      "(or mirrored) instead")
    cluster_lib.check_port_free(cluster.address)
    watchdog = cluster_lib.StartupWatchdog(cluster, c.startup_timeout_secs)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # waits until every task is up
    watchdog.disarm()
    return Backend(strategy, cluster)
  raise UserError(f"unknown distribution backend {backend!r} (--config.distribute.backend); "
                  f"available: {', '.join(BACKENDS)}")
