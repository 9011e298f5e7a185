"""Training-time randomness as a function of (seed, step, replica, site): masks repeat exactly for
the same four, differ when any one changes, keep tf.nn.dropout's law, and the sampled softmax's
negatives keep the law of TensorFlow's own log-uniform sampler."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from models.layers import stateless

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mask(seed=0, step=0, replica=0, site=0, shape=(64, 64)):
  x = tf.ones(shape)
  s = stateless.site_seed(stateless.step_seed(seed, step, replica), site)
  return stateless.dropout(x, 0.5, s).numpy() != 0


def test_seeds_never_collide_across_seed_step_replica_and_site():
  keys = list(itertools.product((0, 1, -1, 2**31 - 1), (0, 1, 255, 256, 10**9),
                                (0, 1, 2**31), (0, 1, 255)))
  seeds = {tuple(stateless.site_seed(stateless.step_seed(a, b, c), d).numpy())
           for a, b, c, d in keys}
  assert len(seeds) == len(keys)
  with pytest.raises(ValueError, match="outside"):
    stateless.site_seed(stateless.step_seed(0, 0), 256)
  with pytest.raises(ValueError, match="32 bits"):
    stateless.step_seed(2**31, 0)


def test_masks_repeat_for_the_same_draw_and_differ_for_any_other():
  base = _mask(seed=3, step=7, replica=1, site=2)
  np.testing.assert_array_equal(base, _mask(seed=3, step=7, replica=1, site=2))
  # Step as the loop passes it: an int64 variable, read inside a tf.function.
  step = tf.Variable(7, dtype=tf.int64)
  traced = tf.function(lambda: stateless.dropout(
      tf.ones([64, 64]), 0.5, stateless.site_seed(stateless.step_seed(3, step, 1), 2)))
  np.testing.assert_array_equal(base, traced().numpy() != 0)
  for other in (dict(seed=4), dict(step=8), dict(step=6), dict(replica=0), dict(replica=2),
                dict(site=1), dict(site=3)):
    mask = _mask(**{**dict(seed=3, step=7, replica=1, site=2), **other})
    # Independent masks agree on about half the units; a shared or shifted one on all.
    assert 0.4 < (mask == base).mean() < 0.6, other


def test_replica_defaults_to_the_replica_context_id():
  assert stateless.replica_id() == 0 and stateless.replica_id(3) == 3
  np.testing.assert_array_equal(stateless.step_seed(5, 2), stateless.step_seed(5, 2, 0))


MIRRORED = r"""
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from models.layers import stateless
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
step = tf.Variable(9, dtype=tf.int64)
seeds = strategy.run(tf.function(lambda: stateless.step_seed(1, step)))
got = [s.numpy().tolist() for s in strategy.experimental_local_results(seeds)]
want = [stateless.step_seed(1, 9, r).numpy().tolist() for r in (0, 1)]
assert got == want and want[0] != want[1], (got, want)
print("OK")
"""


def test_each_mirrored_replica_draws_with_its_own_id():
  proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_dropout_keeps_tf_nn_dropouts_law():
  x = tf.fill([200, 500], 2.0)
  out = stateless.dropout(x, 0.3, stateless.step_seed(0, 1)).numpy()
  kept = out != 0
  assert abs(kept.mean() - 0.7) < 0.005          # 100k units: sd 0.0015
  np.testing.assert_allclose(out[kept], 2.0 / 0.7, rtol=1e-6)


def test_log_uniform_candidates_have_tensorflows_law():
  """Against tf.random.log_uniform_candidate_sampler(unique=True) over 1,500 draws each: the
  frequency with which each id is among the negatives, and the expected counts it reports for
  true classes (a function of its number of draws)."""
  vocab, k, n = 30, 8, 1500
  labels = tf.constant([[0], [5], [29]], tf.int64)

  @tf.function
  def draws(fn):
    return tf.map_fn(fn, tf.range(n, dtype=tf.int64),
                     fn_output_signature=(tf.int64, tf.float32, tf.float32))

  ours = draws(lambda i: stateless.log_uniform_candidates(
      labels, k, vocab, tf.stack([tf.constant(11, tf.int64), i])))
  tf.random.set_seed(0)
  theirs = draws(lambda i: tuple(
      tf.random.log_uniform_candidate_sampler(labels, 1, k, unique=True, range_max=vocab)))
  stats = []
  for sampled, true_count, sampled_count in (ours, theirs):
    sampled = sampled.numpy()
    assert all(len(set(row)) == k for row in sampled) and sampled.max() < vocab
    inclusion = np.bincount(sampled.ravel(), minlength=vocab) / n
    stats.append((inclusion, true_count.numpy()[:, :, 0], sampled_count.numpy(), sampled))
  (inc, true_count, sampled_count, sampled), (inc_tf, true_tf, _, _) = stats
  np.testing.assert_allclose(inc, inc_tf, atol=0.05)          # sd of each <= 0.013
  np.testing.assert_allclose(true_count.mean(0), true_tf.mean(0), rtol=0.03)
  np.testing.assert_allclose(true_count.std(0), true_tf.std(0), rtol=0.15)
  # Each draw's counts are one function of its number of draws: id 0's reported count as a
  # negative equals its reported count as a true class.
  has0 = sampled == 0
  np.testing.assert_allclose(sampled_count[has0], np.repeat(true_count[:, 0], k)[has0.ravel()],
                             rtol=1e-6)
  again = stateless.log_uniform_candidates(labels, k, vocab, tf.constant([11, 4], tf.int64))
  np.testing.assert_array_equal(again[0], sampled[4])
