"""Distribution backends: a `tf.distribute` strategy the training loop runs its step through.

  single        TensorFlow's default strategy: one device.
  mirrored      MirroredStrategy over this host's GPUs, or, on a machine without GPUs, over
                `num_logical_cpus` logical CPU devices (so data parallelism is testable on a CPU).
  multi_worker  MultiWorkerMirroredStrategy: synchronous all-reduce across the worker
                processes `TF_CONFIG` describes (scripts/launch_local.py starts them locally).
  sync_backup   synchronous SGD with backup workers on parameter servers (Chen et al. 2016):
                N + b workers compute each step's gradient, the chief applies the first N.
  async_ps      asynchronous SGD on the same parameter servers: each worker applies its own.

The first three run through one executor (tfsys/train/allreduce.py): it reads replica counts from
the strategy, slices the per-replica LSTM state by replica id, and all-reduces gradients itself.
The parameter-server backends run the same step split between chief and workers
(tfsys/train/ps/); for them `Backend.ps` says who is who.
"""
import dataclasses
import re

import tensorflow as tf
from absl import logging as absl_logging

from tfsys.distribute import cluster as cluster_lib
from tfsys.errors import TaskLostError, UserError, error_summary

BACKENDS = ("single", "mirrored", "multi_worker", "sync_backup", "async_ps")
PS_BACKENDS = ("sync_backup", "async_ps")


@dataclasses.dataclass(frozen=True)
class PSCluster:
  """A parameter-server job as this task sees it."""
  kind: str                  # sync_backup | async_ps
  role: str                  # ps | chief | worker
  ps_devices: list
  num_workers: int
  replicas_to_aggregate: int  # N: gradients per update (async_ps: every worker, each alone)
  chief_address: str

  @property
  def backups(self) -> int:
    return self.num_workers - self.replicas_to_aggregate


_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
                tf.errors.DeadlineExceededError, tf.errors.InternalError)
_TASK_IN_MESSAGE = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


@dataclasses.dataclass
class Backend:
  strategy: tf.distribute.Strategy
  cluster: cluster_lib.Cluster | None = None
  ps: PSCluster | None = None
  collective_timeout_secs: float = 0.0

  def lost_peer(self, e: Exception) -> TaskLostError | None:
    """A multi_worker step's error as one line naming the lost peer, or None if it is not one.

    A peer that dies aborts every collective ("Collective ops is aborted by: ... Connection
    reset by peer"), one that hangs times the collective out after collective_timeout_secs
    (DeadlineExceeded). TensorFlow names the peer's task in some of these messages; where it
    does not, the peers that no longer accept connections are named.
    """
    if self.cluster is None or self.ps is not None or not isinstance(e, _PEER_ERRORS):
      return None
    text = (getattr(e, "message", "") or str(e)).strip()
    named = sorted({f"{job}{task}" for job, task in _TASK_IN_MESSAGE.findall(text)}
                   - {self.cluster.name})
    gone = [f"{n} ({a})" for n, a in self.cluster.peers() if not cluster_lib.reachable(a, 2.0)]
    if isinstance(e, tf.errors.DeadlineExceededError):
      why = (f"a collective waited {self.collective_timeout_secs:.0f} s for its peers "
             "(--config.distribute.collective_timeout_secs)")
    else:
      why = error_summary(e)
    if not gone and not named and not isinstance(e, tf.errors.DeadlineExceededError):
      return None   # nobody is missing: an error of our own, not a lost peer
    who = ", ".join(gone) or ", ".join(named)
    return TaskLostError(
        f"[{self.cluster.name}] lost {who} of the all-reduce ({type(e).__name__}: {why}); "
        "exiting. multi_worker cannot go on without a worker: relaunch the cluster to resume "
        "from the last checkpoint")

  @property
  def replicas(self) -> int:
    """Blocks the global batch is cut into, one gradient each: the strategy's replicas, N under
    sync_backup, every worker under async_ps."""
    return self.strategy.num_replicas_in_sync if self.ps is None else self.ps.replicas_to_aggregate

  @property
  def gradients_per_update(self) -> int:
    """Gradients averaged into one update: all the replicas', except under async_ps (one)."""
    return 1 if self.ps is not None and self.ps.kind == "async_ps" else self.replicas

  @property
  def data_shards(self) -> int:
    """Blocks of rows the training stream is cut into: one per replica or per ps worker."""
    return self.replicas if self.ps is None else self.ps.num_workers

  @property
  def is_chief(self) -> bool:
    """Whether this process writes summaries, checkpoints and config (one per cluster)."""
    return self.cluster is None or self.cluster.is_chief

  @property
  def task_name(self) -> str:
    return self.cluster.name if self.cluster else "local"


def _logical_cpus(n: int, check: bool = True) -> list[str]:
  """n logical CPU devices; check: list them (which starts TensorFlow's runtime, so not before
  MultiWorkerMirroredStrategy, which must configure its collectives first)."""
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  except RuntimeError:
    pass  # devices already initialised in this process: usable if the count matches
  if not check:
    return []
  devices = [d.name for d in tf.config.list_logical_devices("CPU")]
  if len(devices) != n:
    raise UserError(f"this process already uses {len(devices)} CPU devices; "
                    f"num_logical_cpus={n} must be set before TensorFlow starts (run it as a script)")
  return devices


def make_backend(distribute_config, placed: bool = False) -> Backend:
  """Call before any TensorFlow op runs: devices and threads are fixed at start-up.

  placed: a placement (config.placement) puts one replica's parts on several of this host's
  devices; on a host without GPUs those are `num_logical_cpus` logical CPU devices.
  """
  c = distribute_config
  if c.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(c.intra_op_threads)
  backend = c.backend
  if placed:
    if backend == "mirrored":
      raise UserError(
          "--config.placement places one replica's parts on several devices; mirrored makes "
          "one replica per device, so they cannot both have this host's devices. Use "
          "--config.distribute.backend=single (one process) or multi_worker (one replica per "
          "worker process, each placed over its own host's devices)")
    if not tf.config.list_physical_devices("GPU") and c.num_logical_cpus > 1:
      _logical_cpus(c.num_logical_cpus, check=backend == "single")
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
    timeout = c.get("collective_timeout_secs", 0.0)
    if timeout < 0:
      raise UserError(f"--config.distribute.collective_timeout_secs must be >= 0 (0 = wait "
                      f"forever), got {timeout}")
    # A collective that waits longer than this for a peer fails (DeadlineExceeded) instead of
    # blocking the survivors forever on a peer that hangs.
    pack_mb = c.get("allreduce_pack_mb", 0.0)
    if pack_mb < 0:
      raise UserError(f"--config.distribute.allreduce_pack_mb must be >= 0 (0 = TensorFlow's "
                      f"choice), got {pack_mb}")
    options = tf.distribute.experimental.CommunicationOptions(
        bytes_per_pack=int(pack_mb * 2**20), timeout_seconds=timeout or None)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    watchdog.disarm()   # (the constructor waits until every task is up)
    return Backend(strategy, cluster, collective_timeout_secs=timeout)
  if backend in PS_BACKENDS:
    return _ps_backend(c)
  raise UserError(f"unknown distribution backend {backend!r} (--config.distribute.backend); "
                  f"available: {', '.join(BACKENDS)}")


def _ps_backend(c) -> Backend:
  """Checks TF_CONFIG for a parameter-server backend and connects this task to the ps tasks.

  A ps task only starts its server (the caller then serves forever). The chief and the workers
  are separate eager clients that each connect to the ps tasks and themselves only: with the
  whole cluster in the spec the connection would wait for every other client (DESIGN.md §3).
  """
  cluster = cluster_lib.from_env()
  if cluster is None:
    raise UserError(f"the {c.backend} backend needs TF_CONFIG with ps, chief and worker jobs; "
                    "scripts/launch_local.py --num_ps=P --num_workers=K sets it for a local cluster")
  missing = [job for job in ("ps", "chief", "worker") if job not in cluster.jobs]
  if missing:
    raise UserError(f"TF_CONFIG for {c.backend} needs ps, chief and worker jobs; it has no "
                    f"{', '.join(missing)} job (jobs: {', '.join(cluster.jobs)})")
  if len(cluster.jobs["chief"]) != 1:
    raise UserError(f"TF_CONFIG for {c.backend} needs exactly one chief, got "
                    f"{len(cluster.jobs['chief'])}")
  workers = len(cluster.jobs["worker"])
  if c.backend == "sync_backup":
    n, total = c.replicas_to_aggregate, c.total_num_replicas
    if n < 1:
      raise UserError(f"--config.distribute.replicas_to_aggregate must be >= 1, got {n}")
    if total < n:
      raise UserError(f"--config.distribute.total_num_replicas ({total}) is smaller than "
                      f"replicas_to_aggregate ({n}): there are N + b workers, b >= 0")
    if total != workers:
      raise UserError(f"--config.distribute.total_num_replicas={total} but TF_CONFIG has "
                      f"{workers} worker task(s): start N + b = {total} workers")
  else:
    n = workers
  ps = PSCluster(kind=c.backend, role=cluster.task_type,
                 ps_devices=[f"/job:ps/replica:0/task:{j}/device:CPU:0"
                             for j in range(len(cluster.jobs["ps"]))],
                 num_workers=workers, replicas_to_aggregate=n,
                 chief_address=cluster.jobs["chief"][0])
  if cluster.task_type not in ("ps", "chief", "worker"):
    raise UserError(f"task type {cluster.task_type!r} has no part in {c.backend}")
  cluster_lib.check_port_free(cluster.address)
  if cluster.task_type != "ps":
    ps_tasks = [(f"ps{j}", a) for j, a in enumerate(cluster.jobs["ps"])]
    cluster_lib.wait_for(ps_tasks, c.startup_timeout_secs, cluster.name)
    spec = tf.train.ClusterSpec({"ps": cluster.jobs["ps"],
                                 cluster.task_type: {cluster.task_index: cluster.address}})
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # it logs its whole session config at INFO
    try:
      tf.config.experimental_connect_to_cluster(spec, job_name=cluster.task_type,
                                                task_index=cluster.task_index)
    finally:
      absl_logging.set_verbosity(level)
  return Backend(tf.distribute.get_strategy(), cluster, ps)
