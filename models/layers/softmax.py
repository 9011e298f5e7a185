"""The full softmax's cross-entropy, -log softmax(logits)[label] per row, and its gradient.

The same function as tf.nn.sparse_softmax_cross_entropy_with_logits, from TensorFlow's
element-wise and reduction ops, which TensorFlow runs on all the CPU's threads: at the PTB word
LM's [700, 10000] the fused kernel took 24 ms forward and backward against 12 ms here on a
2-core AVX-512 CPU with oneDNN on (20 against 22 with it off), the forward alone 21-31 against
8-10 ms (`python bench/softmax.py` prints both); evaluation's full softmax is the forward alone. The gradient is softmax(logits) - onehot(label),
scaled per row: the softmax's numerators kept from the forward, the label's entry subtracted
in place (no [N, V] one-hot).
"""
import tensorflow as tf


def sparse_softmax_cross_entropy(labels, logits):
  """labels [N] int, logits [N, V] float32 -> losses [N] float32."""
  labels = tf.convert_to_tensor(labels)

  @tf.custom_gradient
  def xent(logits):
    top = tf.stop_gradient(tf.reduce_max(logits, axis=1, keepdims=True))
    numerators = tf.exp(logits - top)
    sums = tf.reduce_sum(numerators, axis=1)
    loss = tf.math.log(sums) + top[:, 0] - tf.gather(logits, labels, batch_dims=1)

    def grad(upstream):
      scaled = numerators * (upstream / sums)[:, None]
      where = tf.stack([tf.range(tf.shape(labels)[0], dtype=labels.dtype), labels], axis=1)
      return tf.tensor_scatter_nd_sub(scaled, where, upstream)
    return loss, grad
  return xent(logits)


def sampled_softmax_loss(weights, biases, labels, inputs, sampled_values, gather,
                         compute_dtype=tf.float32):
  """tf.nn.sampled_softmax_loss(..., num_true=1, remove_accidental_hits=True), computed in fewer
  passes over the [N, S] logits.

  labels [N] int64, inputs [N, P] float32, sampled_values = (sampled [S] int64 distinct,
  true_expected_count [N, 1], sampled_expected_count [S]) as a candidate sampler gives them,
  gather(table, ids) the rows of `weights` and `biases` (a sharded table's, "div"). Returns the
  per-row losses [N]. compute_dtype (train.precision): the dtype of the [N, P] x [P, S]
  matmul's operands (bf16: mixed precision); its logits, the true class's and the loss are
  float32.

  TensorFlow's builds the [N, S + 1] logits by concatenation, removes accidental hits by adding
  a dense [N, S] tensor built from their sparse positions, and hands dense [N, S + 1] labels to
  its single-threaded fused cross-entropy (bench/sampled_softmax.py: 42% of the loss and
  gradient's time around the matmuls at the LM1B configs' sizes). Here the true class's logit
  stays a column of its own, an accidental hit (the sampled ids are distinct, so a row's label
  is among them at most once) is found by a sorted search and set in place, and the
  cross-entropy and its gradient are element-wise ops on all threads, as in
  sparse_softmax_cross_entropy.
  """
  sampled, true_expected, sampled_expected = sampled_values
  n = tf.shape(labels)[0]
  ids = tf.concat([labels, sampled], 0)
  rows, bias = gather(weights, ids), gather(biases, ids)
  true_logits = (tf.reduce_sum(inputs * rows[:n], 1) + bias[:n]
                 - tf.math.log(tf.cast(true_expected[:, 0], tf.float32)))
  if compute_dtype == tf.float32:
    products = tf.matmul(inputs, rows[n:], transpose_b=True)
  else:
    products = tf.cast(tf.matmul(tf.cast(inputs, compute_dtype), tf.cast(rows[n:], compute_dtype),
                                 transpose_b=True), tf.float32)
  sampled_logits = products + (bias[n:] - tf.math.log(tf.cast(sampled_expected, tf.float32)))
  # Accidental hits: a sampled class that is the row's label counts as no negative.
  order = tf.argsort(sampled)
  ordered = tf.gather(sampled, order)
  at = tf.minimum(tf.searchsorted(ordered, labels), tf.size(sampled) - 1)
  hit = tf.where(tf.equal(tf.gather(ordered, at), labels))[:, 0]
  where = tf.stack([tf.cast(hit, tf.int32), tf.gather(tf.gather(order, at), hit)], axis=1)
  sampled_logits = tf.tensor_scatter_nd_add(
      sampled_logits, where, tf.fill(tf.shape(hit), tf.float32.min))
  return _true_vs_sampled_cross_entropy(true_logits, sampled_logits)


@tf.custom_gradient
def _true_vs_sampled_cross_entropy(true_logits, sampled_logits):
  """-log softmax([t, s_1..s_S])[0] per row, and its gradient."""
  top = tf.stop_gradient(tf.maximum(true_logits, tf.reduce_max(sampled_logits, axis=1)))
  true_exp = tf.exp(true_logits - top)
  numerators = tf.exp(sampled_logits - top[:, None])
  sums = true_exp + tf.reduce_sum(numerators, axis=1)
  loss = tf.math.log(sums) + top - true_logits

  def grad(upstream):
    scale = upstream / sums
    return (true_exp * scale - upstream, numerators * scale[:, None])
  return loss, grad
