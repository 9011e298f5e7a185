"""Training on parameter servers: sync_backup (Chen et al. 2016) and async_ps.

Tasks (TF_CONFIG): `ps` tasks serve the state (server.py; its layout and protocol: state.py)
and run nothing of their own; the `chief` owns the run through the one controller, with its
executor (chief.py what both kinds share; sync_chief.py: it applies every update;
async_chief.py: it watches the workers apply theirs); the `worker` tasks compute gradients with
the one step (workers.py). memory.py reports what each ps task holds, from shapes. sync_backup writes one record per step (records.py);
straggler.py injects the delays its benchmark studies.

`config.train.batch_size` is the batch of one update: N × the per-worker batch under
sync_backup; under async_ps every worker computes on batch_size / num_workers rows, the same
per-worker batch as sync_backup with N = num_workers (Backend.replicas).
"""
import tensorflow as tf

from tfsys.errors import TaskLostError, exit_now
from tfsys.train.controller import Controller
from tfsys.train.ps.server import PSWatch, serve
from tfsys.train.ps.state import PSState
from tfsys.train.run import Run


def train(config, workdir: str, backend, profiler) -> dict | None:
  """This task's part; the results on the chief, None on a worker (a ps task never returns)."""
  ps = backend.ps
  if ps.role == "ps":
    serve(backend)
  profiler.unsupported(config.distribute.backend)
  r = Run(config, workdir, backend)
  watch = PSWatch(backend.cluster, config.distribute.ps_timeout_secs)
  try:
    shared = PSState(r, ps)
    if ps.role == "chief":
      from tfsys.train.ps.async_chief import AsyncChief
      from tfsys.train.ps.sync_chief import SyncChief
      chief = (SyncChief if ps.kind == "sync_backup" else AsyncChief)(r, shared, watch)
      return Controller(r, chief, profiler).train()
    from tfsys.train.ps.workers import AsyncWorker, SyncWorker
    try:
      (SyncWorker if ps.kind == "sync_backup" else AsyncWorker)(r, shared, watch).train()
    finally:
      r.checkpointer.close()
  except tf.errors.OpError as e:
    lost = watch.explain(e)
    if lost is None:
      raise
    # At once: a call of another thread may still be blocked on the ps.
    exit_now(str(lost), lost.exit_status)
  except TaskLostError as e:
    exit_now(str(e), e.exit_status)
  return None
