import numpy as np
import pytest
import tensorflow as tf

from models.layers.char_cnn import char_cnn, char_cnn_shapes
from models.layers.lstm import FORGET_BIAS, autodiff_lstmp_layer, lstmp_layer, lstmp_shapes

pytestmark = pytest.mark.kernels   # numerics: .ci/run repeats these with oneDNN on and off


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _reference_lstmp(x, c, h, w_x, w_h, b, w_p, cell_clip, forget_bias=FORGET_BIAS):
  """A straightforward per-step, per-gate implementation in NumPy."""
  outs = []
  units = w_h.shape[1] // 4
  for t in range(x.shape[1]):
    z = x[:, t] @ w_x + h @ w_h + b
    i, f, g, o = (z[:, k * units:(k + 1) * units] for k in range(4))
    c = _sigmoid(f + forget_bias) * c + _sigmoid(i) * np.tanh(g)
    if cell_clip:
      c = np.clip(c, -cell_clip, cell_clip)
    m = _sigmoid(o) * np.tanh(c)
    h = m @ w_p if w_p is not None else m
    outs.append(h)
  return np.stack(outs, 1), c, h


def _params(shapes, rng):
  return {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}


def test_lstmp_matches_reference():
  rng = np.random.default_rng(0)
  for projection, clip in ((0, 0.0), (3, 0.0), (3, 0.5)):
    p = _params(lstmp_shapes(4, 5, projection), rng)
    x = rng.normal(size=(2, 6, 4)).astype(np.float32)
    out_dim = projection or 5
    c0 = rng.normal(size=(2, 5)).astype(np.float32)
    h0 = rng.normal(size=(2, out_dim)).astype(np.float32)
    got, (c, h) = lstmp_layer(tf.constant(x), (c0, h0), {k: tf.constant(v) for k, v in p.items()},
                              clip)
    want, wc, wh = _reference_lstmp(x, c0, h0, p["w_x"], p["w_h"], p["b"], p.get("w_p"), clip)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c.numpy(), wc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.numpy(), wh, rtol=1e-4, atol=1e-5)
    if clip:
      assert np.abs(c.numpy()).max() <= clip + 1e-6
    # Without the pre-activations the backward keeps (evaluation): the same loop, the same sums.
    plain, (pc, ph) = lstmp_layer(tf.constant(x), (c0, h0),
                                  {k: tf.constant(v) for k, v in p.items()}, clip, backward=False)
    for a, b in ((plain, got), (pc, c), (ph, h)):
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_char_cnn_shapes_and_max_pool():
  shapes = char_cnn_shapes(4, (1, 3), (2, 5), num_highway=1, projection=6)
  assert shapes["conv3_w"] == [3, 4, 5] and shapes["highway0_w_h"] == [7, 7]
  rng = np.random.default_rng(1)
  p = {k: tf.constant(v) for k, v in _params(shapes, rng).items()}
  ids = tf.constant(rng.integers(0, 259, size=(3, 9)), tf.int32)
  out = char_cnn(ids, p, (1, 3), num_highway=1)
  assert out.shape == (3, 6)
  # Without highway or projection, the width-1 features are the max over positions of
  # tanh(embedding · w + b), which we can compute by hand.
  plain = char_cnn(ids, {k: v for k, v in p.items() if k.startswith(("char", "conv"))}, (1,), 0)
  emb = tf.gather(p["char_embedding"], ids).numpy()
  manual = np.tanh(emb @ p["conv1_w"].numpy()[0] + p["conv1_b"].numpy()).max(axis=1)
  np.testing.assert_allclose(plain.numpy(), manual, rtol=1e-5, atol=1e-6)


def test_highway_gate_closed_is_identity():
  shapes = char_cnn_shapes(4, (2,), (6,), num_highway=1, projection=0)
  rng = np.random.default_rng(2)
  p = {k: tf.constant(v) for k, v in _params(shapes, rng).items()}
  ids = tf.constant(rng.integers(0, 259, size=(5, 7)), tf.int32)
  no_highway = char_cnn(ids, p, (2,), num_highway=0)
  p["highway0_b_t"] = tf.fill([6], -50.0)   # transform gate shut: carry the input through
  np.testing.assert_allclose(char_cnn(ids, p, (2,), num_highway=1).numpy(), no_highway.numpy(),
                             atol=1e-6)


def test_lstmp_forget_bias_matches_reference():
  """Kim et al.'s LSTM has no forget-gate bias: forget_bias=0 follows the reference too."""
  rng = np.random.default_rng(3)
  p = _params(lstmp_shapes(4, 5, 0), rng)
  x = rng.normal(size=(2, 6, 4)).astype(np.float32)
  c0, h0 = (rng.normal(size=(2, 5)).astype(np.float32) for _ in range(2))
  tp = {k: tf.constant(v) for k, v in p.items()}
  got, _ = lstmp_layer(tf.constant(x), (c0, h0), tp, 0.0, forget_bias=0.0)
  want, _, _ = _reference_lstmp(x, c0, h0, p["w_x"], p["w_h"], p["b"], None, 0.0, forget_bias=0.0)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
  default, _ = lstmp_layer(tf.constant(x), (c0, h0), tp, 0.0)
  assert np.abs(got.numpy() - default.numpy()).max() > 1e-3


def test_char_cnn_zero_pad_ignores_the_padding_embedding():
  from tfsys.data.chars import PAD, encode_words
  shapes = char_cnn_shapes(4, (1, 3), (3, 5), num_highway=1, projection=0)
  rng = np.random.default_rng(4)
  p = _params(shapes, rng)
  ids = tf.constant(encode_words(["a", "word", "longer"], 12))
  other = dict(p, char_embedding=p["char_embedding"].copy())
  other["char_embedding"][PAD] += 3.0
  run = lambda params, zero_pad: char_cnn(ids, {k: tf.constant(v) for k, v in params.items()},
                                          (1, 3), 1, zero_pad=zero_pad).numpy()
  np.testing.assert_allclose(run(p, True), run(other, True), atol=1e-6)
  assert np.abs(run(p, False) - run(other, False)).max() > 1e-3
  # Same as a zero row in the table.
  zeroed = dict(p, char_embedding=p["char_embedding"].copy())
  zeroed["char_embedding"][PAD] = 0.0
  np.testing.assert_allclose(run(p, True), run(zeroed, False), atol=1e-6)


def test_next_ids_is_greedy_at_temperature_0_and_a_seeded_draw_above():
  from models.layers.sampling import next_ids
  logits = tf.constant([[0.0, 3.0, 1.0, 2.0], [2.0, 0.0, 0.0, 1.0]])
  seed = tf.constant([7, 3], tf.int32)
  assert next_ids(logits, tf.constant(0.0), seed).numpy().tolist() == [1, 0]
  for t in (0.5, 1.0, 4.0):   # the draw of the stateless sampler at logits / T, whatever T
    want = tf.random.stateless_categorical(logits / t, 1, seed)[:, 0].numpy().tolist()
    got = next_ids(logits, tf.constant(t), seed)
    assert got.dtype == tf.int32 and got.numpy().tolist() == want
  many = tf.tile(logits[:1], [2000, 1])   # at T = 1 the draws follow softmax(logits)
  counts = np.bincount(next_ids(many, tf.constant(1.0), seed).numpy(), minlength=4) / 2000
  np.testing.assert_allclose(counts, tf.nn.softmax(logits[0]).numpy(), atol=0.04)


def test_lstmp_in_bfloat16_is_the_reference_to_bf16_rounding():
  """Mixed precision: bf16 matmul operands, float32 gates and state; outputs in bf16."""
  rng = np.random.default_rng(1)
  p = _params(lstmp_shapes(4, 5, 3), rng)
  x = rng.normal(size=(2, 6, 4)).astype(np.float32)
  c0, h0 = rng.normal(size=(2, 5)).astype(np.float32), rng.normal(size=(2, 3)).astype(np.float32)
  got, (c, h) = lstmp_layer(tf.constant(x), (c0, h0), {k: tf.constant(v) for k, v in p.items()},
                            compute_dtype=tf.bfloat16)
  assert got.dtype == tf.bfloat16 and c.dtype == tf.float32 and h.dtype == tf.float32
  want, wc, wh = _reference_lstmp(x, c0, h0, p["w_x"], p["w_h"], p["b"], p["w_p"], 0.0)
  # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operand): a few 1e-3 after 6 steps
  np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, rtol=0.03, atol=0.03)
  np.testing.assert_allclose(c.numpy(), wc, rtol=0.03, atol=0.03)
  np.testing.assert_allclose(h.numpy(), wh, rtol=0.03, atol=0.03)
  assert np.abs(c.numpy() - wc).max() > 0   # it did compute in bf16


def test_the_cross_entropy_is_tensorflows_kernel_forward_and_backward():
  from models.layers.softmax import sparse_softmax_cross_entropy
  rng = np.random.default_rng(3)
  for scale in (1.0, 30.0):                       # large logits: no overflow
    logits = tf.constant(scale * rng.normal(size=(7, 50)), tf.float32)
    labels = tf.constant(rng.integers(0, 50, 7), tf.int32)
    weights = tf.constant(rng.uniform(size=7), tf.float32)
    results = []
    for fn in (tf.nn.sparse_softmax_cross_entropy_with_logits, sparse_softmax_cross_entropy):
      with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = fn(labels, logits)
        total = tf.reduce_sum(loss * weights)
      results.append((loss.numpy(), tape.gradient(total, logits).numpy()))
    (want, want_grad), (got, got_grad) = results
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()


def _loss_and_gradients(layer, x, c0, h0, params, clip, forget_bias, dtype, weights):
  """A loss on all three outputs (outputs, c, h), and its gradients for every input."""
  @tf.function
  def run():
    with tf.GradientTape() as tape:
      tape.watch([x, c0, h0])
      y, (c, h) = layer(x, (c0, h0), params, clip, forget_bias, compute_dtype=dtype)
      loss = (tf.reduce_sum(tf.cast(y, tf.float32) * weights[0]) + tf.reduce_sum(c * weights[1])
              + tf.reduce_sum(h * weights[2]))
    return [loss] + tape.gradient(loss, [x, c0, h0] + list(params.values()))
  return [t.numpy() for t in run()]


@pytest.mark.parametrize("projection,clip,forget_bias,dtype,tolerance", [
    (0, 0.0, FORGET_BIAS, tf.float32, 1e-5), (3, 0.0, FORGET_BIAS, tf.float32, 1e-5),
    (3, 0.5, FORGET_BIAS, tf.float32, 1e-5), (0, 0.3, 0.0, tf.float32, 1e-5),
    # bf16: the reference rounds the backward's running sums to bf16, ours keeps them float32
    (3, 0.0, FORGET_BIAS, tf.bfloat16, 0.03), (0, 0.3, FORGET_BIAS, tf.bfloat16, 0.03)])
def test_lstmp_gradient_is_the_automatic_one(projection, clip, forget_bias, dtype, tolerance):
  """The hand-written backward loop against TensorFlow's gradient of the plain forward loop:
  the inputs', the carried state's (c0, h0) and every weight's, through outputs, c and h."""
  rng = np.random.default_rng(5)
  p = {k: tf.Variable(v) for k, v in _params(lstmp_shapes(4, 5, projection), rng).items()}
  out = projection or 5
  x = tf.constant(rng.normal(size=(3, 7, 4)).astype(np.float32))
  c0 = tf.constant(rng.normal(size=(3, 5)).astype(np.float32))
  h0 = tf.constant(rng.normal(size=(3, out)).astype(np.float32))
  weights = [tf.constant(rng.normal(size=shape).astype(np.float32))
             for shape in ((3, 7, out), (3, 5), (3, out))]
  got = _loss_and_gradients(lstmp_layer, x, c0, h0, p, clip, forget_bias, dtype, weights)
  want = _loss_and_gradients(autodiff_lstmp_layer, x, c0, h0, p, clip, forget_bias, dtype, weights)
  names = ["loss", "x", "c0", "h0"] + list(p)
  for name, g, w in zip(names, got, want):
    assert g.shape == w.shape, name
    scale = max(np.abs(w).max(), 1e-3)
    assert np.abs(g - w).max() <= tolerance * scale, (name, np.abs(g - w).max(), scale)
  if clip:   # the clip was active: some c left the range, so the mask mattered
    _, (c, _) = autodiff_lstmp_layer(x, (c0, h0), p, 0.0, forget_bias)
    assert np.abs(c.numpy()).max() > clip


def test_lstmp_gradient_of_the_outputs_alone():
  """A caller that drops the final state (an encoder reads only the outputs) gets None for it
  upstream; the gradient is then the outputs' alone."""
  rng = np.random.default_rng(6)
  p = {k: tf.constant(v) for k, v in _params(lstmp_shapes(4, 5, 0), rng).items()}
  x = tf.constant(rng.normal(size=(2, 5, 4)).astype(np.float32))
  zeros = tf.zeros([2, 5])
  grads = []
  for layer in (lstmp_layer, autodiff_lstmp_layer):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y, _ = layer(x, (zeros, zeros), p)
      loss = tf.reduce_sum(y * y)
    grads.append(tape.gradient(loss, x).numpy())
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sharded", [False, True])
def test_sampled_softmax_loss_is_tensorflows(sharded):
  """models/layers/softmax.py's sampled softmax against tf.nn.sampled_softmax_loss (num_true=1,
  accidental hits removed): the losses and the gradients of the inputs, the table and the
  biases, with rows whose label is among the sampled classes, and over a table in shards."""
  from models.layers.softmax import sampled_softmax_loss
  rng = np.random.default_rng(7)
  vocab, dim, n = 50, 6, 9
  w = rng.normal(size=(vocab, dim)).astype(np.float32)
  b = rng.normal(size=vocab).astype(np.float32)
  table = ([tf.Variable(w[:25]), tf.Variable(w[25:])] if sharded else tf.Variable(w))
  biases = ([tf.Variable(b[:25]), tf.Variable(b[25:])] if sharded else tf.Variable(b))
  inputs = tf.constant(rng.normal(size=(n, dim)).astype(np.float32))
  sampled = tf.constant([3, 17, 40, 8, 29, 0, 44], tf.int64)        # distinct, as drawn
  labels = tf.constant([17, 5, 44, 3, 49, 17, 30, 0, 12], tf.int64)   # rows 0, 2, 3, 5, 7 hit
  true_expected = tf.constant(rng.uniform(0.1, 1, size=(n, 1)).astype(np.float32))
  sampled_expected = tf.constant(rng.uniform(0.1, 1, size=7).astype(np.float32))
  values = (sampled, true_expected, sampled_expected)
  variables = (table if sharded else [table]) + (biases if sharded else [biases])

  def run(fn):
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      losses = fn()
      total = tf.reduce_sum(losses * tf.range(1.0, n + 1))   # a different weight per row
    grads = tape.gradient(total, [inputs] + variables)
    return [losses.numpy()] + [tf.convert_to_tensor(g).numpy() for g in grads]

  ours = run(lambda: sampled_softmax_loss(
      table, biases, labels, inputs, values,
      gather=lambda t, ids: tf.nn.embedding_lookup(t, ids)))
  theirs = run(lambda: tf.nn.sampled_softmax_loss(
      table, biases, labels[:, None], inputs, num_sampled=7, num_classes=vocab,
      sampled_values=values, remove_accidental_hits=True))
  names = ["losses", "inputs"] + [v.name for v in variables]
  for name, a, t in zip(names, ours, theirs):
    np.testing.assert_allclose(a, t, rtol=1e-5, atol=1e-5, err_msg=name)
