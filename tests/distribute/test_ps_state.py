"""Shared state by name and its placement over ps tasks (here: this process's CPU standing in
for two ps devices), and straggler injection."""
import types

import numpy as np
import pytest
import tensorflow as tf

import configs.common
from models.variables import ServerPlacement, VariableSpec
from tfsys.distribute import ps
from tfsys.errors import UserError
from tfsys.train.optim import make_optimizer
from tfsys.train.ps.straggler import Straggler

CPU = "/job:localhost/replica:0/task:0/device:CPU:0"


def test_large_variables_are_split_by_rows_and_others_balanced():
  local = [tf.Variable(tf.zeros([10, 3])), tf.Variable(tf.zeros([4])), tf.Variable(tf.zeros([2, 2]))]
  store = ps.ShardedStore("placement", local, [CPU, CPU], min_shard_rows=5)
  assert store.pieces[0] == [(0, 0, 5, 0), (1, 5, 10, 0)]     # (ps, rows, offset in its flat)
  assert store.pieces[1] == [(0, 0, 4, 15)]     # both hold 60 bytes: the first wins
  assert store.pieces[2] == [(1, 0, 2, 15)]     # ps 0 now holds more
  assert store.bytes_per_ps == [60 + 16, 60 + 16] and store.sizes == [19, 19]
  assert [k for k, *_ in store.variables_on(1)] == [0, 2]


def test_values_round_trip_and_are_shared_by_name():
  values = [np.arange(30, dtype=np.float32).reshape(10, 3), np.ones(4, np.float32)]
  store = ps.ShardedStore("shared", [tf.Variable(v) for v in values], [CPU, CPU], min_shard_rows=5)
  store.push(values)
  # Another client making the same store by name sees the same resources.
  local = [tf.Variable(tf.zeros_like(v)) for v in values]
  other = ps.ShardedStore("shared", local, [CPU, CPU], min_shard_rows=5)
  other.pull(local)
  for v, want in zip(local, values):
    np.testing.assert_array_equal(v.numpy(), want)
  store.flats[1][:15].assign(store.flats[1][:15] + 1)   # an update of ps 1's rows of var 0
  np.testing.assert_array_equal(other.read(0).numpy()[5:], values[0][5:] + 1)
  np.testing.assert_array_equal(other.read(0).numpy()[:5], values[0][:5])


def _straggler(**settings):
  c = configs.common.base_config().distribute.straggler
  for k, v in settings.items():
    c[k] = v
  return c


def test_straggler_delays():
  plain = Straggler(_straggler(compute_ms=30, workers="1", scale_ms=40), worker=0, seed=0)
  assert [plain.delay_secs() for _ in range(3)] == [0.03] * 3
  # compute_ms is what the whole computation takes: the real part is not slept again
  assert plain.delay_secs(0.01) == pytest.approx(0.02) and plain.delay_secs(0.05) == 0.0
  slow = Straggler(_straggler(compute_ms=30, workers="0,1", scale_ms=40), worker=1, seed=0)
  delays = np.array([slow.delay_secs() for _ in range(2000)])
  assert delays.min() >= 0.07                      # scale_ms is the Pareto minimum
  # Pareto(shape 1.5) above its minimum has mean scale / (shape - 1): 80 ms more on average.
  assert 0.03 + 0.04 + 0.06 < delays.mean() < 0.03 + 0.04 + 0.11
  rare = Straggler(_straggler(workers="all", scale_ms=40, probability=0.1), worker=3, seed=0)
  assert 0.05 < np.mean([rare.delay_secs() > 0 for _ in range(2000)]) < 0.15


def test_bad_straggler_settings():
  with pytest.raises(UserError, match="worker indices"):
    Straggler(_straggler(workers="zero"), worker=0, seed=0)
  with pytest.raises(UserError, match="probability in"):
    Straggler(_straggler(probability=2.0), worker=0, seed=0)


# ---------------------------------------------------------------- sparse table gradients
class _Run:
  """What PSState reads of a Run: one table [10, 3] and one dense variable [4], made by the
  parameter-server placement."""

  def __init__(self, optimizer_name, clip_norm=0.0):
    config = configs.common.base_config()
    config.optim.name, config.optim.clip_norm = optimizer_name, clip_norm
    config.optim.initial_accumulator = 0.1
    self.config = config
    self.placement = ServerPlacement([CPU, CPU], min_shard_rows=1000)
    self.variables = [
        self.placement.create(VariableSpec(
            "table", (10, 3), lambda: np.arange(30, dtype=np.float32).reshape(10, 3), table=True,
            rows_per_token=1)),
        self.placement.create(VariableSpec("dense", (4,), lambda: np.ones(4, np.float32)))]
    self.optimizer = make_optimizer(config.optim)
    self.optimizer.build(self.variables)
    self.backend = types.SimpleNamespace(
        cluster=types.SimpleNamespace(task_type="localhost", task_index=0))


def _state(r, kind="async_ps", workers=1):
  from tfsys.train.ps.state import PSState
  ps_cluster = types.SimpleNamespace(ps_devices=[CPU, CPU], kind=kind, num_workers=workers)
  state = PSState(r, ps_cluster)
  state.params.push(r.variables)
  for name, store in state.slots.items():
    store.push(r.optimizer.slots[name])
  return state


# Rows 1 (twice: duplicates sum) and 7 of the table; 7 is on the second ps task's piece.
ROWS = tf.IndexedSlices(tf.constant([[1., 2., 3.], [4., 5., 6.], [.5, .5, .5]]),
                        tf.constant([1, 7, 1]), tf.constant([10, 3]))
DENSE = tf.constant([.1, .2, .3, .4])


@pytest.mark.parametrize("optimizer_name", ["sgd", "adagrad"])
def test_a_sparse_update_on_the_ps_equals_the_dense_one_and_leaves_other_rows(optimizer_name):
  r = _Run(optimizer_name)
  state = _state(r)
  flats, rows = state.split([ROWS, DENSE])
  assert [tuple(i.numpy()) for i, _ in rows] == [(1,), (2,)]   # piece rows: 1 of [0, 5), 7 - 5
  state.apply(flats, rows, tf.constant(0.5), tf.constant(1.0))
  table, dense = state.params.read_all()
  # The dense update of the same gradient, by the same optimizer on local copies.
  r2 = _Run(optimizer_name)
  r2.optimizer.apply([tf.convert_to_tensor(ROWS), DENSE], r2.variables, 0.5)
  np.testing.assert_allclose(table.numpy(), r2.variables[0].numpy(), rtol=1e-6)
  np.testing.assert_allclose(dense.numpy(), r2.variables[1].numpy(), rtol=1e-6)
  before = np.arange(30, dtype=np.float32).reshape(10, 3)
  untouched = [i for i in range(10) if i not in (1, 7)]
  np.testing.assert_array_equal(table.numpy()[untouched], before[untouched])   # bit-identical
  assert not np.array_equal(table.numpy()[[1, 7]], before[[1, 7]])
  if optimizer_name == "adagrad":
    acc = state.slots["accumulator"].read_all()[0].numpy()
    np.testing.assert_array_equal(acc[untouched], np.full((8, 3), 0.1, np.float32))
    np.testing.assert_allclose(acc[1], 0.1 + np.square([1.5, 2.5, 3.5]), rtol=1e-6)


def test_buffered_rows_average_over_the_used_workers_and_fingerprints_are_linear():
  r = _Run("sgd")
  state = _state(r, kind="sync_backup", workers=3)
  state.clear_buffers()
  state.set_fingerprint_vectors()
  grads = [[ROWS, DENSE],
           [tf.IndexedSlices(tf.constant([[1., 1., 1.]]), tf.constant([9]), tf.constant([10, 3])),
            2 * DENSE],
           [tf.IndexedSlices(tf.constant([[9., 9., 9.]]), tf.constant([0]), tf.constant([10, 3])),
            3 * DENSE]]
  fingerprints = []
  for w, g in enumerate(grads):
    flats, rows = state.split(g)
    state.write(w, flats, rows)
    fingerprints.append(float(state.fingerprint(flats, rows)))
  # Workers 0 and 1 used, worker 2's gradient dropped.
  flats, rows, small_sq = state.average(tf.constant([1., 1., 0.]), 2.0)
  want = (tf.convert_to_tensor(ROWS) + tf.convert_to_tensor(grads[1][0])).numpy() / 2
  got = np.zeros((10, 3), np.float32)
  for (_, _, lo, _), (index, values) in zip(state.params.table_pieces, rows):
    got[index.numpy() + lo] += values.numpy()
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert 0 not in [int(i) for i, _ in zip(*rows[0])]   # worker 2's row 0 is not there
  np.testing.assert_allclose(float(state.fingerprint(flats, rows)),
                             (fingerprints[0] + fingerprints[1]) / 2, rtol=1e-5)
  sq = lambda g: float(np.sum(np.square(tf.convert_to_tensor(g[0]).numpy()))
                       + np.sum(np.square(g[1].numpy())))
  np.testing.assert_allclose(float(small_sq), sq(grads[0]) + sq(grads[1]), rtol=1e-5)


def test_the_billion_word_models_ps_memory_from_shapes_alone(monkeypatch):
  from configs import lm1b_big_lstm_cnn
  from models.lstm_lm import num_parameters
  from tfsys.train.ps import memory

  def no_allocation(*args, **kwargs):
    raise AssertionError("the report allocated a variable")
  monkeypatch.setattr(tf, "Variable", no_allocation)
  config = lm1b_big_lstm_cnn.get_config()
  vocab = 793_471
  report = memory.plan(config, vocab, num_ps=4, num_workers=3, kind="sync_backup",
                       replicas_to_aggregate=3)
  assert [m.task for m in report] == ["ps0", "ps1", "ps2", "ps3"]
  params = num_parameters(config.model, vocab) * 4
  assert sum(m.parameter_bytes for m in report) == params
  assert all(m.slot_bytes == m.parameter_bytes for m in report)   # Adagrad: one accumulator
  # The softmax (793,471 x 1024, 3.0 GiB) is split by rows: each ps task holds about a quarter.
  assert all(abs(m.parameter_bytes - params / 4) < 0.02 * params for m in report)
  # Buffers: each of 3 workers' gradient of the dense part, plus at most the rows its batch
  # touches of each table piece (42 x 20 targets + 8,192 samples), never the vocabulary.
  dense_buffers = 3 * (params - vocab * 1025 * 4) // 4
  touched = 3 * (42 * 20 + 8192) * (1024 * 4 + 8 + 4 + 8)
  for m in report:
    assert m.buffer_bytes <= dense_buffers * 1.02 + touched
    # Dense buffers for everything (the tables too) would be 3 x its parameters: 2.9 GiB.
    assert m.buffer_bytes < 0.8 * 3 * m.parameter_bytes
  assert "ps3: parameters 0.96 GiB" in memory.describe(report)
