"""Shared state by name and its placement over ps tasks (here: this process's CPU standing in
for two ps devices), and straggler injection."""
import numpy as np
import pytest
import tensorflow as tf

import configs.common
from tfsys.distribute import ps
from tfsys.errors import UserError
from tfsys.train.ps_loop import Straggler

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
