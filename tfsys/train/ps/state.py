"""The state of a parameter-server job, the same in every client: its layout and protocol.

Chief and workers are separate eager clients of the ps tasks, all addressing the same state by
name (tfsys/distribute/ps.py):

  params, optimizer slots   sharded over the ps tasks (large tables split by rows)
  grads/<w>/<j>             worker w's latest gradient, the part for ps j (sync_backup)
  global_step, lr_decay     on ps 0
  tokens/<w>                worker w's queue of steps to compute (sync_backup)
  commits                   (worker, step, loss, compute secs, fingerprint) in arrival order
  started                   one element once the chief has put the run's state on the ps
"""
import time

import tensorflow as tf

from tfsys.distribute import ps as ps_lib
from tfsys.train.optim import sum_duplicate_rows

FINGERPRINT_SIZE = 65536   # elements per ps task a gradient fingerprint looks at


def _as_rows(grad, shape):
  """A table's gradient as (row indices, values) with duplicates summed; a dense gradient (or
  none) as all its rows (or none)."""
  if grad is None:
    return tf.zeros([0], tf.int64), tf.zeros([0, *shape[1:]])
  if not isinstance(grad, tf.IndexedSlices):
    grad = tf.IndexedSlices(tf.convert_to_tensor(grad), tf.range(shape[0], dtype=tf.int64))
  grad = sum_duplicate_rows(grad)
  return tf.cast(grad.indices, tf.int64), grad.values


def _hash_weights(rows, cols, salt: int):
  """Fixed weights in [-0.5, 0.5) for the elements (rows × cols) of table `salt`, computed from
  their positions (a multiplicative hash): the same in every client, with no table of them."""
  key = rows[:, None] * 2654435761 + cols[None, :] * 40503 + salt * 97
  return tf.cast(tf.math.floormod(key, 65536), tf.float32) / 65536.0 - 0.5


class PSState:
  """Handles to the state on the ps tasks, made the same way in every client.

  A gradient travels as (flats, rows): one flat dense vector per ps task for the variables that
  are not tables, and for each table piece (Layout.table_pieces) the rows the gradient touches
  as (row indices in the piece, values), duplicates summed. So a worker's gradient of an
  embedding or a sampled softmax is the size of its batch's words and samples, never of the
  vocabulary, and an update touches only those rows (as under the all-reduce backends).
  """

  def __init__(self, r, ps):
    devices = ps.ps_devices
    self.r, self.ps, self.devices = r, ps, devices
    # The placement that made the model's variables places their state on the ps tasks.
    self.params = r.placement.store("params", r.variables)
    opt = r.optimizer
    self.slots = {name: r.placement.store(f"slots/{name}", opt.slots[name], like=r.variables)
                  for name in opt.slot_names}
    self.global_step = ps_lib.shared_variable("global_step", [], tf.int64, devices[0])
    self.lr_decay = ps_lib.shared_variable("lr_decay", [], tf.float32, devices[0])
    self.commits = ps_lib.commit_queue(devices[0])
    self.started_queue = ps_lib.started_queue(devices[0])
    self.sizes = self.params.sizes
    cluster = r.backend.cluster
    self.local_device = f"/job:{cluster.task_type}/replica:0/task:{cluster.task_index}/device:CPU:0"
    if ps.kind == "sync_backup":
      # The step of each worker's latest commit: whom a waiting chief is waiting for.
      self.committed = ps_lib.shared_variable("committed", [ps.num_workers], tf.int64, devices[0])
      self.tokens = [ps_lib.token_queue(w, devices[0]) for w in range(ps.num_workers)]
      self.buffers = [[ps_lib.shared_variable(f"grads/{w}/{j}", [max(n, 1)], tf.float32, devices[j])
                       for j, n in enumerate(self.sizes)] for w in range(ps.num_workers)]
      # A table piece's rows: as many as the worker's gradient touched (the leading dimension
      # of these variables changes from one gradient to the next).
      self.row_buffers = [[
          (ps_lib.shared_variable(f"grads/{w}/t{k}/{j}/rows", [None], tf.int64, devices[j]),
           ps_lib.shared_variable(f"grads/{w}/t{k}/{j}/values",
                                  [None, *self.params.piece_shape(k, lo, hi)[1:]], tf.float32,
                                  devices[j]))
          for k, j, lo, hi in self.params.table_pieces] for w in range(ps.num_workers)]
      self.fingerprint_vectors = [
          ps_lib.shared_variable(f"fingerprint/{j}", [length], tf.float32, devices[j])
          for j, (_, length) in enumerate(self._fingerprint_layout())]

  # ---------------------------------------------------------------- gradients
  def split(self, grads):
    """A gradient list (one per variable) as (flats, rows): see the class."""
    layout = self.params
    flats = layout.flatten([None if layout.tables[k]          # (not in the flats)
                            else tf.zeros(shape) if g is None else tf.convert_to_tensor(g)
                            for k, (g, shape) in enumerate(zip(grads, layout.shapes))])
    deduped, rows = {}, []
    for k, j, lo, hi in layout.table_pieces:
      if k not in deduped:
        deduped[k] = _as_rows(grads[k], layout.shapes[k])
      index, values = deduped[k]
      inside = tf.logical_and(index >= lo, index < hi)
      rows.append((tf.boolean_mask(index, inside) - lo, tf.boolean_mask(values, inside)))
    return flats, rows

  def sq_norm(self, flats, rows):
    """|g|^2 of a gradient in (flats, rows) form (its rows' indices distinct), summed on the ps
    tasks that hold its parts."""
    sq = []
    for j, flat in enumerate(flats):
      with tf.device(self.devices[j]):
        sq.append(tf.reduce_sum(tf.square(flat)))
    for (_, j, _, _), (_, values) in zip(self.params.table_pieces, rows):
      with tf.device(self.devices[j]):
        sq.append(tf.reduce_sum(tf.square(values)))
    return tf.add_n(sq)

  def apply(self, flats, rows, learning_rate, t):
    """Clips the gradient by its global norm and applies the optimizer on the ps tasks: to each
    ps task's flat parameters at once (the optimizers are element-wise, so one update of the
    flat is the update of every variable in it) and to each table piece's touched rows only,
    through the optimizer's public `update`. Returns the norm before clipping and the updates
    (to order after)."""
    opt, clip = self.r.optimizer, self.r.config.optim.clip_norm
    norm = tf.sqrt(self.sq_norm(flats, rows))
    scale = clip / tf.maximum(norm, clip) if clip else tf.constant(1.0)
    updates = []
    for j, flat in enumerate(flats):
      with tf.device(self.devices[j]):
        slots = [self.slots[name].flats[j] for name in opt.slot_names]
        updates.append(opt.update(self.params.flats[j], flat * scale, learning_rate, t, *slots))
    for p, ((k, j, lo, hi), (index, values)) in enumerate(zip(self.params.table_pieces, rows)):
      with tf.device(self.devices[j]):
        slots = [self.slots[name].table_vars[p] for name in opt.slot_names]
        grad = tf.IndexedSlices(values * scale, index,
                                tf.constant(self.params.piece_shape(k, lo, hi), tf.int64))
        updates.append(opt.update(self.params.table_vars[p], grad, learning_rate, t, *slots))
    return norm, updates

  def write(self, worker: int, flats, rows) -> list:
    """Ops that write a worker's gradient to its buffers on the ps tasks."""
    writes = []
    for j, flat in enumerate(flats):
      with tf.device(self.devices[j]):
        writes.append(self.buffers[worker][j].assign(flat, read_value=False))
    for (_, j, _, _), (index_var, values_var), (index, values) in zip(
        self.params.table_pieces, self.row_buffers[worker], rows):
      with tf.device(self.devices[j]):
        writes.append(index_var.assign(index, read_value=False))
        writes.append(values_var.assign(values, read_value=False))
    return writes

  def clear_buffers(self) -> None:
    for w in range(self.ps.num_workers):
      for j, n in enumerate(self.sizes):
        self.buffers[w][j].assign(tf.zeros([max(n, 1)]))
      for index_var, values_var in self.row_buffers[w]:
        index_var.assign(tf.zeros([0], tf.int64))
        values_var.assign(tf.zeros([0, *values_var.shape[1:]]))

  def average(self, mask, n):
    """The mean of the gradients of the workers in `mask` (one 0/1 per worker; n of them), read
    from their buffers on the ps tasks, as (flats, rows), and the sum of their |g_w|^2 (for the
    noise scale). Only the used workers' buffers are read: they are idle until the next token,
    while a late worker's may be half written (its rows and values from different steps)."""
    W = self.ps.num_workers
    used = [mask[w] > 0 for w in range(W)]
    flats, small = [], []
    for j in range(len(self.devices)):
      with tf.device(self.devices[j]):
        empty = tf.zeros([max(self.sizes[j], 1)])
        bufs = [tf.cond(used[w], self.buffers[w][j].read_value, lambda: empty) for w in range(W)]
        flats.append(tf.add_n(bufs) / n)
        small.append(tf.add_n([tf.reduce_sum(tf.square(b)) for b in bufs]))
    rows = []
    for p, (k, j, lo, hi) in enumerate(self.params.table_pieces):
      shape = self.params.piece_shape(k, lo, hi)
      with tf.device(self.devices[j]):
        parts = []
        for w in range(W):
          index_var, values_var = self.row_buffers[w][p]
          parts.append(tf.cond(
              used[w], lambda i=index_var, v=values_var: (i.read_value(), v.read_value()),
              lambda: (tf.zeros([0], tf.int64), tf.zeros([0, *shape[1:]]))))
        small.append(tf.add_n([tf.reduce_sum(tf.square(v)) for _, v in parts]))
        summed = sum_duplicate_rows(tf.IndexedSlices(
            tf.concat([v for _, v in parts], 0) / n, tf.concat([i for i, _ in parts], 0),
            tf.constant(shape, tf.int64)))
        rows.append((summed.indices, summed.values))
    return flats, rows, tf.add_n(small)

  # ---------------------------------------------------------------- fingerprints
  def _fingerprint_layout(self):
    """(stride, length) of the subsample a fingerprint looks at, per ps task."""
    out = []
    for size in self.sizes:
      size = size or 1
      stride = -(-size // FINGERPRINT_SIZE)
      out.append((stride, -(-size // stride)))
    return out

  def set_fingerprint_vectors(self) -> None:
    """The chief puts the fixed random vectors of `fingerprint` on the ps tasks (once, instead
    of every client drawing them at every push)."""
    for j, (_, length) in enumerate(self._fingerprint_layout()):
      with tf.device(self.devices[j]):
        self.fingerprint_vectors[j].assign(
            tf.random.stateless_normal([length], seed=[20160404, j]))

  def fingerprint(self, flats, rows):
    """r·g over a fixed subsample of at most FINGERPRINT_SIZE elements per ps task, and over
    every touched row of the tables, r fixed pseudo-random weights: linear, so the fingerprint
    of an average is the average of the fingerprints (the step record checks it), and cheap
    however large the model."""
    out = []
    for j, (flat, (stride, _)) in enumerate(zip(flats, self._fingerprint_layout())):
      with tf.device(self.devices[j]):
        out.append(tf.reduce_sum(self.fingerprint_vectors[j] * flat[::stride]))
    for (k, j, lo, _), (index, values) in zip(self.params.table_pieces, rows):
      with tf.device(self.devices[j]):
        flat_values = tf.reshape(values, [tf.shape(values)[0], -1])
        cols = tf.range(tf.shape(flat_values)[1], dtype=tf.int64)
        out.append(tf.reduce_sum(flat_values * _hash_weights(index + lo, cols, k)))
    return tf.add_n(out)

  def pull_slots(self) -> None:
    for name, store in self.slots.items():
      store.pull(self.r.optimizer.slots[name])

  def push(self, start: int) -> None:
    """The chief puts its (fresh or restored) parameters, slots, decay and step on the ps."""
    r = self.r
    self.params.push(r.variables)
    for name, store in self.slots.items():
      store.push(r.optimizer.slots[name])
    self.lr_decay.assign(r.learning_rate.decay)
    self.global_step.assign(start)

  @tf.function
  def read_step(self):
    return tf.identity(self.global_step)

  @tf.function
  def _started_size(self):
    with tf.device(self.devices[0]):
      return tf.raw_ops.QueueSizeV2(handle=self.started_queue)

  def started(self) -> bool:
    """Whether the chief has put the run's state on the ps tasks."""
    return int(self._started_size()) > 0

  def mark_started(self) -> None:
    with tf.device(self.devices[0]):
      if int(self._started_size()) == 0:
        tf.raw_ops.QueueEnqueueV2(handle=self.started_queue, components=[tf.constant(1, tf.int64)])

  def mark_stopped(self) -> None:
    """Withdraws the started marker: async workers stop before their next update."""
    with tf.device(self.devices[0]):
      ps_lib.dequeue_all(self.started_queue)

  def settled_step(self, quiet_secs: float = 0.5, limit_secs: float = 10.0) -> int:
    """The global step once it has not moved for quiet_secs (the last updates in flight have
    landed), or after limit_secs."""
    step, since, t0 = int(self.read_step()), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet_secs and time.monotonic() - t0 < limit_secs:
      time.sleep(0.05)
      now = int(self.read_step())
      if now != step:
        step, since = now, time.monotonic()
    return step
