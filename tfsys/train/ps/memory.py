"""What each ps task will hold, from shapes alone: parameters, optimizer slots, gradient buffers.

A parameter-server job's memory is decided before it starts: the layout (tfsys/distribute/ps.py)
places every declared variable (models/variables.py) from its shape, the optimizer keeps as many
slots per parameter as it names, and under sync_backup every worker has a gradient buffer on
each ps task: dense for the variables that are not tables, and for each table piece as many rows
as one worker's batch can touch (its words, and the sampled classes of a sampled softmax), never
the vocabulary. So the report of the BIG LSTM at the full One Billion Word vocabulary is
computed here, on any machine, without allocating anything.
"""
import dataclasses

import models
from tfsys.distribute.ps import Layout
from tfsys.train.optim import make_optimizer

ROW_INDEX_BYTES = 8   # int64, one per buffered row


@dataclasses.dataclass(frozen=True)
class PSMemory:
  task: str
  parameter_bytes: int
  slot_bytes: int
  buffer_bytes: int

  @property
  def total_bytes(self) -> int:
    return self.parameter_bytes + self.slot_bytes + self.buffer_bytes


def tokens_per_gradient(config, rows: int) -> int:
  """Tokens in one worker's batch of `rows` rows (a stream window, or padded sentences)."""
  length = config.train.get("unroll", 0) or config.data.get("max_length", 0) + 1
  return rows * length


def plan(config, vocab_size: int, num_ps: int, num_workers: int, kind: str,
         replicas_to_aggregate: int | None = None) -> list[PSMemory]:
  """Bytes per ps task of a `kind` (sync_backup or async_ps) job with num_ps ps tasks and
  num_workers workers, from config's shapes."""
  specs = models.variable_specs(config.model, vocab_size)
  layout = Layout([s.shape for s in specs], 4, num_ps, config.distribute.shard_min_rows,
                  [s.table for s in specs])
  slots = len(make_optimizer(config.optim).slot_names)   # (no variable is made before build)
  n = replicas_to_aggregate or (num_workers if kind == "async_ps" else
                                config.distribute.replicas_to_aggregate)
  tokens = tokens_per_gradient(config, config.train.batch_size // max(n, 1))
  out = []
  for j in range(num_ps):
    buffers = 0
    if kind == "sync_backup":
      per_worker = layout.sizes[j] * 4 if layout.sizes[j] else 4
      for k, i, lo, hi in layout.table_pieces:
        if i == j:
          rows = min(hi - lo, specs[k].touched_rows(tokens))
          per_worker += rows * (layout.row_bytes(k) + ROW_INDEX_BYTES)
      buffers = num_workers * per_worker
    params = layout.bytes_per_ps[j]
    out.append(PSMemory(f"ps{j}", params, params * slots, buffers))
  return out


def describe(report: list[PSMemory]) -> str:
  def gb(b):
    return f"{b / 2**30:.2f} GiB" if b >= 2**28 else f"{b / 2**20:.1f} MiB"
  return "; ".join(f"{m.task}: parameters {gb(m.parameter_bytes)}, optimizer slots "
                   f"{gb(m.slot_bytes)}, gradient buffers {gb(m.buffer_bytes)} "
                   f"({gb(m.total_bytes)} in all)" for m in report)
