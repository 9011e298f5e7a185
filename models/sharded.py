"""Tables split by rows over devices, and computation pinned to a device forward and backward.

A `ShardedTable` is a [V, D] (or [V]) table held as K variables of consecutive rows, one per
device, sized as TensorFlow's "div" partition strategy sizes them (the first V mod K shards one
row longer), which is what `tf.nn.embedding_lookup` and `tf.nn.sampled_softmax_loss` assume
when handed a list of shards: the lookups gather from each shard on its own device, and the
gradients come back to each shard as the rows it gave.

In a checkpoint a ShardedTable is one tensor, the whole table, under the key an unsplit
variable of the same name has: a run saved with K shards restores into K' shards, into an
unsplit model (`single`, serving) and back. TensorFlow's own `ShardedVariable` does the
resharding too, but its SavedModel cannot be loaded by `tf.saved_model.load`; tfsys exports
from an unsplit model restored from the checkpoint, so a SavedModel never holds shards.

`on_device(device, fn, *args)` runs fn's forward AND backward ops on `device`. A device scope
alone places only the forward ops: TF2's tape builds the gradient ops where the `tape.gradient`
call is, and would run a placed model's whole backward pass on the default device (measured:
every gradient op of a traced step had no device). A custom gradient whose gradient function
opens the same device scope fixes that, for every op of the part, including the recurrence's
loop and the sparse (IndexedSlices) gradients of gathered rows.
"""
import tensorflow as tf
from tensorflow.python.trackable import base as trackable


def row_sizes(rows: int, shards: int) -> list:
  """Rows per shard, as the "div" partition strategy cuts them."""
  if not 1 <= shards <= rows:
    raise ValueError(f"cannot split {rows} rows into {shards} shards")
  return [rows // shards + (1 if k < rows % shards else 0) for k in range(shards)]


class ShardedTable(trackable.Trackable):
  """A table split by rows into variables on several devices."""

  def __init__(self, name: str, shards: list, trainable: bool = True):
    # A plain list, not a tracked one: the checkpoint holds the whole table, not the shards.
    self._shards, self._name, self.trainable = list(shards), name, trainable

  @classmethod
  def create(cls, name: str, value, devices, dtype=tf.float32, trainable: bool = True):
    """value: the whole table's initial value (a tensor or a function making it)."""
    value = value() if callable(value) else value
    sizes = row_sizes(int(value.shape[0]), len(devices))
    shards = []
    for k, (device, piece) in enumerate(zip(devices, tf.split(value, sizes, axis=0))):
      with tf.device(device):
        shards.append(tf.Variable(piece, name=f"{name}/shard{k}", dtype=dtype,
                                  trainable=trainable))
    return cls(name, shards, trainable)

  def like(self, name: str, fill: float, trainable: bool = False) -> "ShardedTable":
    """A table of the same shape, split alike, filled with `fill` (an optimizer's slot)."""
    shards = []
    for k, s in enumerate(self._shards):
      with tf.device(s.device):
        shards.append(tf.Variable(tf.fill(s.shape, fill), name=f"{name}/shard{k}",
                                  dtype=s.dtype, trainable=trainable))
    return ShardedTable(name, shards, trainable)

  @property
  def shards(self) -> list:
    return list(self._shards)

  @property
  def name(self) -> str:
    return self._name

  @property
  def dtype(self):
    return self._shards[0].dtype

  @property
  def shape(self) -> tf.TensorShape:
    rows = sum(int(s.shape[0]) for s in self._shards)
    return tf.TensorShape([rows] + self._shards[0].shape.as_list()[1:])

  @property
  def devices(self) -> list:
    return [s.device for s in self._shards]

  def value(self) -> tf.Tensor:
    """The whole table (a copy gathered from every shard)."""
    return tf.concat([s.read_value() for s in self._shards], axis=0)

  # ---- the checkpoint: the whole table, under an unsplit variable's key --------------------
  def _serialize_to_tensors(self):
    return {trackable.VARIABLE_VALUE_KEY: self.value()}

  def _restore_from_tensors(self, restored_tensors):
    whole = restored_tensors[trackable.VARIABLE_VALUE_KEY]
    pieces = tf.split(whole, [int(s.shape[0]) for s in self._shards], axis=0)
    return tf.group([s.assign(p) for s, p in zip(self._shards, pieces)])


def shards(table) -> list:
  """The variables of a table: its shards, or itself."""
  return table.shards if isinstance(table, ShardedTable) else [table]


def listed(table):
  """What TensorFlow's lookups take: the list of a sharded table's shards, else the variable."""
  return table.shards if isinstance(table, ShardedTable) else table


def variables_of(params) -> list:
  """Every tf.Variable of a list of parameters (variables or sharded tables), in order."""
  return [v for p in params for v in shards(p)]


def gather(table, ids):
  """table[ids], each shard's rows gathered on its device (TensorFlow colocates the gathers)."""
  return tf.nn.embedding_lookup(shards(table), ids)


def logits(h, weights, biases=None):
  """h [N, P] @ weights[V, P]ᵀ + biases [V] -> [N, V] in the weights' dtype (h may be bf16:
  mixed precision); a sharded table's columns are computed on each shard's device (forward and
  backward) and concatenated."""
  if not isinstance(weights, ShardedTable):
    out = _product(h, weights)
    return out if biases is None else out + biases
  bias_shards = shards(biases) if biases is not None else [None] * len(weights.shards)
  columns = []
  for w, b in zip(weights.shards, bias_shards):
    def piece(h, w=w, b=b):
      out = _product(h, w)
      return out if b is None else out + b
    columns.append(on_device(w.device, piece, h, name=weights.name + "_columns"))
  return tf.concat(columns, axis=-1)


def _product(h, w):
  """h @ wᵀ in h's dtype (bf16 under mixed precision: w cast to it), returned in w's."""
  if h.dtype == w.dtype:
    return tf.matmul(h, w, transpose_b=True)
  return tf.cast(tf.matmul(h, tf.cast(w, h.dtype), transpose_b=True), w.dtype)


def on_device(device: str, fn, *args, name: str = "placed"):
  """fn(*args) with its forward and backward ops on `device` (see the module's docstring),
  under the name scopes `name` and `name`_grad (a traced step's ops say whose they are)."""
  flat = tf.nest.flatten(args)

  @tf.custom_gradient
  def call(*flat_in):
    with tf.device(device), tf.name_scope(name):
      with tf.GradientTape() as tape:
        for x in flat_in:
          if x.dtype.is_floating:
            tape.watch(x)
        out = fn(*tf.nest.pack_sequence_as(args, list(flat_in)))
    flat_out = tf.nest.flatten(out)

    def grad(*dys, variables=()):
      # An output nothing downstream used (the carried LSTM state) comes back as None.
      dys = [tf.zeros_like(y) if dy is None else dy for y, dy in zip(flat_out, dys)]
      with tf.device(device), tf.name_scope(f"{name}_grad"):
        grads = tape.gradient(flat_out, list(flat_in) + list(variables),
                              output_gradients=list(dys))
      return grads[:len(flat_in)], grads[len(flat_in):]
    return out, grad

  flat = [tf.convert_to_tensor(x) for x in flat]
  return call(*flat)
