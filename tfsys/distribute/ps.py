"""State on parameter servers, shared by every client of a cluster by name.

TensorFlow 2 has no shared variables between processes: an eager `tf.Variable` is anonymous
and belongs to the process that made it. The parameter-server backends need state that the
chief and every worker address alike, so it is created here by `shared_name` on a ps task's
device (the ps keeps one resource per name; every client that names it gets the same one):

- `shared_variable` wraps such a resource as an ordinary `tf.Variable` (assign, read, use in a
  `tf.function`, optimizers), which is never destroyed by a client going away;
- `ShardedStore` keeps a copy of a list of local variables on the ps tasks, the large ones split
  by rows over all of them and the rest placed whole on the least loaded, and moves values
  between the local variables and their shards;
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


class ShardedStore:
  """A copy of local variables on the ps tasks.

  A variable with at least `min_shard_rows` rows is split by rows into one shard per ps task;
  any other goes whole to the ps task holding the fewest bytes so far (in the order given, so
  every client computes the same placement). `pieces[k]` lists variable k's shards as
  (ps index, first row, end row, shared variable).
  """

  def __init__(self, name: str, variables, ps_devices: list[str], min_shard_rows: int):
    self.name, self.devices = name, ps_devices
    self.shapes = [v.shape for v in variables]
    self.pieces = []
    load = [0] * len(ps_devices)
    for k, v in enumerate(variables):
      rows = v.shape[0] if v.shape.rank else 0
      if len(ps_devices) > 1 and rows >= max(min_shard_rows, len(ps_devices)):
        spans = [(j, lo, hi) for j, (lo, hi) in enumerate(_shard_rows(rows, len(ps_devices)))]
      else:
        j = int(np.argmin(load))
        spans = [(j, 0, rows)]
      row_elems = int(np.prod(v.shape[1:])) if v.shape.rank else 1
      pieces = []
      for j, lo, hi in spans:
        shape = [hi - lo, *v.shape[1:]] if v.shape.rank else []
        var = shared_variable(f"{name}/{k}/{j}", shape, v.dtype, ps_devices[j])
        pieces.append((j, lo, hi, var))
        load[j] += max(hi - lo, 1) * row_elems * v.dtype.size
      self.pieces.append(pieces)
    self.bytes_per_ps = load

  def variables_on(self, j: int):
    """(k, first row, end row, shard) of every piece on ps task j, in variable order."""
    return [(k, lo, hi, var) for k, pieces in enumerate(self.pieces)
            for (i, lo, hi, var) in pieces if i == j]

  def push(self, values) -> None:
    """Writes values (tensors or local variables, one per stored variable) to the shards."""
    for pieces, value in zip(self.pieces, values):
      for j, lo, hi, var in pieces:
        with tf.device(self.devices[j]):
          var.assign(value[lo:hi] if len(pieces) > 1 else value)

  def read(self, k: int) -> tf.Tensor:
    """The whole value of stored variable k (shards concatenated)."""
    pieces = self.pieces[k]
    if len(pieces) == 1:
      return tf.identity(pieces[0][3])
    return tf.concat([var.read_value() for *_, var in pieces], axis=0)

  def pull(self, local_variables) -> None:
    """Copies the stored values into the local variables."""
    for k, v in enumerate(local_variables):
      v.assign(self.read(k))


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


COMMIT_TYPES = [tf.int64, tf.int64, tf.float32, tf.float32, tf.float32]


def commit_queue(device: str):
  """(worker, step, loss, compute secs, fingerprint): "my gradient for `step` is in my buffers",
  in arrival order."""
  with tf.init_scope(), tf.device(device):
    return tf.raw_ops.FIFOQueueV2(component_types=COMMIT_TYPES, shapes=[[]] * 5, capacity=-1,
                                  shared_name=f"{PREFIX}commits")
