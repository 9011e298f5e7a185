"""Training-time randomness as a pure function of (seed, step, replica, site).

A resumed run has to draw, at every step, the dropout masks and samples that the uninterrupted
run drew at that step. TensorFlow's stateful random ops (tf.nn.dropout, tf.random.uniform,
tf.random.log_uniform_candidate_sampler, tfp's .sample() without a seed) keep their position in
the kernel: a restarted process begins their streams again, so its first step after a restore
reuses the masks of the first run's first step. The stateless ops (tf.random.stateless_*) take
the seed as an input instead, and here the seed of every draw is made from

    model seed  the config's seed (what the model's initial weights come from too)
    step        the global step the gradient is for (a checkpoint restores it)
    replica     which replica computes it: its own mask for its own rows (Srivastava et al.
                2014 drop units independently per example; replicas holding the same mask for
                different rows would correlate the gradients they average)
    site        a constant per call site: two dropout layers in one step never share a mask

packed injectively into int64 [2] = [model_seed · 2^32 + replica, step · 2^8 + site], so no two
(seed, step, replica, site) with |seed| < 2^31, replica < 2^32, step < 2^55 and site < 256 get
the same seed. Nearby seeds give unrelated streams: the ops scramble the seed through Philox
before using it (StatelessRandomGetKeyCounter, as core/kernels/stateless_random_ops.cc).
"""
import math

import tensorflow as tf

SITE_BITS = 8
NUM_SITES = 1 << SITE_BITS
REPLICA_BITS = 32


def replica_id(replica=None):
  """`replica` if given (a parameter-server worker passes its task index), else this replica's
  id in its tf.distribute group (MirroredStrategy, MultiWorkerMirroredStrategy: the global
  replica id; the default strategy: 0), or 0 in a cross-replica context."""
  if replica is not None:
    return replica
  context = tf.distribute.get_replica_context()
  return 0 if context is None else context.replica_id_in_sync_group


def step_seed(model_seed: int, step, replica=None) -> tf.Tensor:
  """The seed of one step on one replica, int64 [2]; `site_seed` makes each draw's seed from it.

  step and replica: Python ints, scalar tensors or variables (the loop's global step)."""
  if not -(1 << 31) <= model_seed < (1 << 31):
    raise ValueError(f"the model seed must fit in 32 bits, got {model_seed}")
  replica = tf.cast(replica_id(replica), tf.int64)
  step = tf.cast(step, tf.int64)
  return tf.stack([tf.constant(model_seed << REPLICA_BITS, tf.int64) + replica,
                   step * NUM_SITES])


def site_seed(seed: tf.Tensor, site: int) -> tf.Tensor:
  """The seed of call site `site` (0 <= site < 256) in the step whose seed is `seed`."""
  if not 0 <= site < NUM_SITES:
    raise ValueError(f"random site {site} is outside [0, {NUM_SITES})")
  return seed + tf.constant([0, site], tf.int64)


def dropout(x, rate: float, seed: tf.Tensor):
  """tf.nn.dropout's law (keep with probability 1 - rate, scale by 1 / (1 - rate)), with the
  mask a function of seed alone: a bf16 x (mixed precision) gets float32's mask."""
  if x.dtype == tf.float32:
    return tf.nn.experimental.stateless_dropout(x, rate, seed=seed)
  mask = tf.nn.experimental.stateless_dropout(tf.ones(tf.shape(x)), rate, seed=seed)
  return x * tf.cast(mask, x.dtype)


def log_uniform_candidates(true_classes, num_sampled: int, range_max: int, seed: tf.Tensor):
  """tf.random.log_uniform_candidate_sampler(unique=True)'s algorithm, with stateless draws.

  Returns (sampled [num_sampled] int64, true_expected_count, sampled_expected_count), what
  tf.nn.sampled_softmax_loss takes as `sampled_values`.

  As TensorFlow's sampler (core/kernels/range_sampler.cc): draw ids k = floor(exp(u log(V + 1)))
  - 1, u ~ U[0, 1), so P(k) = log((k + 2) / (k + 1)) / log(V + 1) (Zipfian, Jozefowicz et al.
  2016 §3.1), with replacement; keep the first num_sampled distinct ids in the order drawn;
  the expected count of id k is -expm1(T log1p(-P(k))) for the T draws that took (P(k) T when
  T = num_sampled). The draws come in chunks of 2 num_sampled (typically enough: T is
  1.4-2 num_sampled for the LM1B and PTB configs); chunk i's seed is stateless_fold_in(seed, i)
  = [a 64-bit hash of seed, i], which meets another draw's seed with chance ~2^-64.
  """
  log_range = math.log(range_max + 1.0)
  chunk = 2 * num_sampled

  def draws(i):
    u = tf.random.stateless_uniform([chunk], tf.random.experimental.stateless_fold_in(seed, i),
                                    dtype=tf.float64)
    return tf.cast(tf.exp(u * log_range), tf.int64) - 1

  _, ids = tf.while_loop(
      lambda i, ids: tf.size(tf.unique(ids)[0]) < num_sampled,
      lambda i, ids: (i + 1, tf.concat([ids, draws(i)], 0)),
      (tf.constant(1, tf.int64), draws(tf.constant(0, tf.int64))),
      shape_invariants=(tf.TensorShape([]), tf.TensorShape([None])))
  distinct, first = tf.unique(ids)   # in the order of their first draw
  sampled = distinct[:num_sampled]
  # T: the draw that found the last id kept.
  tries = tf.cast(tf.argmax(tf.cast(tf.equal(first, num_sampled - 1), tf.int32)) + 1, tf.float64)

  def expected_count(k):
    p = tf.math.log1p(1.0 / (tf.cast(k, tf.float64) + 1.0)) / log_range
    count = tf.where(tries == num_sampled, p * num_sampled,
                     -tf.math.expm1(tries * tf.math.log1p(-p)))
    return tf.cast(count, tf.float32)

  sampled.set_shape([num_sampled])
  return sampled, expected_count(true_classes), expected_count(sampled)
