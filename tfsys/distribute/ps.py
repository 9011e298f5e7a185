"""State on parameter servers, shared by every client of a cluster by name.

TensorFlow 2 has no shared variables between processes: an eager `tf.Variable` is anonymous
and belongs to the process that made it. The parameter-server backends need state that the
chief and every worker address alike, so it is created here by `shared_name` on a ps task's
device (the ps keeps one resource per name; every client that names it gets the same one):

- `shared_variable` wraps such a resource as an ordinary `tf.Variable` (assign, read, use in a
  `tf.function`, optimizers), which is never destroyed by a client going away;
- `Layout` places a list of variables over the ps tasks from their shapes (the tables split by
  rows over all of them, the rest whole on the least loaded), and `ShardedStore` keeps a copy
  of local variables there as it says and moves values between them and their pieces;
- `token_queue` / `commit_queue` are the FIFO queues the sync_backup protocol runs on.

Blocking ops on the ps (a dequeue on an empty queue) must run inside a `tf.function`: issued as
plain eager ops they run inline on the ps's request thread and stall every other client
(DESIGN.md §3).
"""
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import gen_resource_variable_ops, handle_data_util
from tensorflow.python.ops import resource_variable_ops

PREFIX = "tfsys/"


class _SharedVariable(resource_variable_ops.BaseResourceVariable):
  """A variable whose resource lives on `device` under `shared_name`, shared by every client.

  Unlike `tf.Variable` no deleter is attached: a client exiting must not destroy a resource the
  other clients still use (the ps owns it for its lifetime).
  """

  def __init__(self, shared_name: str, shape, dtype, device: str, trainable: bool = False):
    shape, dtype = tf.TensorShape(shape), tf.as_dtype(dtype)
    with tf.init_scope(), tf.device(device):
      handle = gen_resource_variable_ops.var_handle_op(
          shape=shape, dtype=dtype, shared_name=PREFIX + shared_name, container="")
      handle_data_util.set_handle_data(handle, handle_data_util.create_handle_data(shape, dtype))
    super().__init__(trainable=trainable, shape=shape, dtype=dtype, handle=handle,
                     unique_id=PREFIX + shared_name, handle_name=shared_name,
                     in_graph_mode=False)


def shared_variable(shared_name: str, shape, dtype, device: str) -> tf.Variable:
  return _SharedVariable(shared_name, shape, dtype, device)


def _shard_rows(rows: int, parts: int) -> list[tuple[int, int]]:
  bounds = np.linspace(0, rows, parts + 1).round().astype(int)
  return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class Layout:
  """Where each of a list of variables lives on the ps tasks, from shapes alone (nothing is
  allocated: the memory report of a config too large for this machine uses it).

  A row-gathered table (an embedding, a sampled softmax: `tables[k]`) is split by rows into one
  piece per ps task, each piece a variable of its own, so that an update touches only the rows
  a gradient carries. Any other variable with at least `min_shard_rows` rows is split by rows
  too; the rest go whole to the ps task holding the fewest bytes so far (in the order given, so
  every client computes the same placement). Each ps task keeps its pieces of the non-table
  variables end to end in one flat variable, so that moving or updating all of them is one op,
  not one per variable. `pieces[k]` lists variable k's pieces as (ps index, first row, end row,
  offset in that ps task's flat variable, or None for a table's piece).
  """

  def __init__(self, shapes, itemsize: int, num_ps: int, min_shard_rows: int, tables=None):
    self.shapes = [tf.TensorShape(s) for s in shapes]
    self.tables = list(tables) if tables is not None else [False] * len(self.shapes)
    self.itemsize, self.num_ps = itemsize, num_ps
    self.pieces = []
    self.sizes = [0] * num_ps                 # elements of each ps task's flat variable
    self.bytes_per_ps = [0] * num_ps          # everything each holds
    for shape, table in zip(self.shapes, self.tables):
      rows = shape[0] if shape.rank else 0
      threshold = num_ps if table else max(min_shard_rows, num_ps)
      if num_ps > 1 and rows >= threshold:
        spans = [(j, lo, hi) for j, (lo, hi) in enumerate(_shard_rows(rows, num_ps))]
      else:
        j = int(np.argmin(self.bytes_per_ps))
        spans = [(j, 0, rows)]
      row_elems = int(np.prod(shape[1:])) if shape.rank else 1
      pieces = []
      for j, lo, hi in spans:
        elems = max(hi - lo, 1) * row_elems
        pieces.append((j, lo, hi, None if table else self.sizes[j]))
        if not table:
          self.sizes[j] += elems
        self.bytes_per_ps[j] += elems * itemsize
      self.pieces.append(pieces)
    # (variable, ps, first row, end row) of every table piece: the order of their gradients.
    self.table_pieces = [(k, j, lo, hi) for k, pieces in enumerate(self.pieces)
                         if self.tables[k] for j, lo, hi, _ in pieces]

  def piece_shape(self, k: int, lo: int, hi: int) -> list:
    shape = self.shapes[k]
    return [hi - lo, *shape[1:]] if shape.rank else []

  def row_bytes(self, k: int) -> int:
    shape = self.shapes[k]
    return (int(np.prod(shape[1:])) if shape.rank else 1) * self.itemsize

  def variables_on(self, j: int):
    """(k, first row, end row, offset, elements) of every flat piece on ps task j, in order."""
    out = []
    for k, pieces in enumerate(self.pieces):
      for i, lo, hi, offset in pieces:
        if i == j and offset is not None:
          out.append((k, lo, hi, offset, int(np.prod(self.piece_shape(k, lo, hi)))))
    return out


class ShardedStore(Layout):
  """A copy of local variables on the ps tasks, placed as `Layout` says: per ps task one flat
  variable for the non-table variables and one variable per table piece (`table_vars`, in
  `table_pieces` order)."""

  def __init__(self, name: str, variables, ps_devices: list[str], min_shard_rows: int,
               tables=None):
    dtypes = {v.dtype for v in variables} or {tf.float32}
    if len(dtypes) > 1:
      raise ValueError(f"a sharded store holds one dtype, got {sorted(d.name for d in dtypes)}")
    (self.dtype,) = dtypes
    super().__init__([v.shape for v in variables], self.dtype.size, len(ps_devices),
                     min_shard_rows, tables)
    self.name, self.devices = name, ps_devices
    self.flats = [shared_variable(f"{name}/{j}", [max(n, 1)], self.dtype, device)
                  for j, (n, device) in enumerate(zip(self.sizes, ps_devices))]
    self.table_vars = [shared_variable(f"{name}/t{k}/{j}", self.piece_shape(k, lo, hi),
                                       self.dtype, ps_devices[j])
                       for k, j, lo, hi in self.table_pieces]

  def flatten(self, values) -> list:
    """One value per stored variable -> one flat tensor per ps task, in its layout (the
    tables' values are left out: they have variables of their own)."""
    flats = []
    for j in range(len(self.devices)):
      parts = []
      for k, lo, hi, _, _ in self.variables_on(j):
        value = values[k]
        if len(self.pieces[k]) > 1:
          value = value[lo:hi]
        parts.append(tf.reshape(tf.convert_to_tensor(value), [-1]))
      flats.append(tf.concat(parts, 0) if parts else tf.zeros([1], self.dtype))
    return flats

  def unflatten(self, flats, table_values=()) -> list:
    """One flat tensor per ps task (and one value per table piece) -> one value per stored
    variable (pieces concatenated)."""
    tables = dict(zip(((k, j) for k, j, _, _ in self.table_pieces), table_values))
    values = []
    for k, pieces in enumerate(self.pieces):
      parts = [tables[k, j] if offset is None else
               tf.reshape(flats[j][offset:offset + int(np.prod(self.piece_shape(k, lo, hi)))],
                          self.piece_shape(k, lo, hi)) for j, lo, hi, offset in pieces]
      values.append(parts[0] if len(parts) == 1 else tf.concat(parts, axis=0))
    return values

  def push(self, values) -> None:
    """Writes values (tensors or local variables, one per stored variable) to the ps tasks."""
    for j, flat in enumerate(self.flatten(values)):
      with tf.device(self.devices[j]):
        self.flats[j].assign(flat)
    for var, (k, j, lo, hi) in zip(self.table_vars, self.table_pieces):
      piece = tf.convert_to_tensor(values[k])[lo:hi]   # sliced here: only the piece travels
      with tf.device(self.devices[j]):
        var.assign(piece)

  def read_all(self) -> list:
    """Every stored variable's value: one read per ps task and table piece."""
    return self.unflatten([flat.read_value() for flat in self.flats],
                          [var.read_value() for var in self.table_vars])

  def read(self, k: int) -> tf.Tensor:
    return self.read_all()[k]

  def pull(self, local_variables) -> None:
    """Copies the stored values into the local variables."""
    for v, value in zip(local_variables, self.read_all()):
      v.assign(value)


def token_queue(worker: int, device: str):
  """Worker `worker`'s queue of step numbers: the chief puts the new global step on every one."""
  with tf.init_scope(), tf.device(device):
    return tf.raw_ops.FIFOQueueV2(component_types=[tf.int64], shapes=[[]], capacity=-1,
                                  shared_name=f"{PREFIX}tokens/{worker}")


def started_queue(device: str):
  """Holds one element once the chief has put the run's state on the ps tasks.

  Workers test its size instead of whether a variable is initialised: a queue is created
  atomically by its handle op, while looking up a variable the chief is creating at that moment
  crashed a ps task (seen once in the async_ps test)."""
  with tf.init_scope(), tf.device(device):
    return tf.raw_ops.FIFOQueueV2(component_types=[tf.int64], shapes=[[]], capacity=-1,
                                  shared_name=f"{PREFIX}started")


def dequeue_all(queue, component_types=(tf.int64,)):
  """Takes whatever `queue` holds now, without waiting (in a tf.function, on its device)."""
  return tf.raw_ops.QueueDequeueUpToV2(handle=queue, n=tf.raw_ops.QueueSizeV2(handle=queue),
                                       component_types=list(component_types))


COMMIT_TYPES = [tf.int64, tf.int64, tf.float32, tf.float32, tf.float32]


def commit_queue(device: str):
  """(worker, step, loss, compute secs, fingerprint): "my gradient for `step` is in my buffers",
  in arrival order."""
  with tf.init_scope(), tf.device(device):
    return tf.raw_ops.FIFOQueueV2(component_types=COMMIT_TYPES, shapes=[[]] * 5, capacity=-1,
                                  shared_name=f"{PREFIX}commits")
