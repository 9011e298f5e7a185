import numpy as np
import pytest
import tensorflow as tf

import models
from configs import lm1b_big_lstm_cnn, lm1b_lstm_2048_512, ptb_char_cnn_lstm
from models.lstm_lm import num_parameters, variable_shapes

pytestmark = pytest.mark.kernels   # numerics: .ci/run repeats these with oneDNN on and off

LM1B_VOCAB = 793_471  # DESIGN.md §5


@pytest.mark.parametrize("module,paper", [(lm1b_lstm_2048_512, 0.83e9),
                                          (lm1b_big_lstm_cnn, 1.04e9)])
def test_lm1b_parameter_counts_match_the_paper(module, paper):
  # Jozefowicz et al. 2016, Table 1. Counted from shapes: nothing of that size is allocated.
  n = num_parameters(module.get_config().model, LM1B_VOCAB)
  assert abs(n - paper) / paper < 0.02, n


def test_built_model_has_exactly_the_declared_variables():
  cfg = ptb_char_cnn_lstm.get_config("smoke").model
  words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(50)]
  m = models.build(cfg, words)
  declared = variable_shapes(cfg, len(words))
  got = {v.name.split(":")[0]: list(v.shape) for v in m.trainable_variables}
  assert got == declared
  assert num_parameters(cfg, len(words)) == sum(int(np.prod(v.shape)) for v in m.trainable_variables)


def _tiny(input_kind="char_cnn", num_samples=0, vocab=40, dropout=0.0,
          init_scale=0.05):
  cfg = ptb_char_cnn_lstm.get_config("smoke")
  cfg.model.init_scale = init_scale
  cfg.model.input = input_kind
  cfg.model.word_dim = 8
  cfg.model.dropout = dropout
  cfg.model.embedding_dropout = dropout
  cfg.model.num_samples = num_samples
  words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(vocab - 2)]
  return models.build(cfg.model, words, seed=1), vocab


@pytest.mark.parametrize("kind", ["char_cnn", "word"])
def test_state_carry_equals_one_long_sequence(kind):
  m, v = _tiny(kind)
  ids = tf.constant(np.random.default_rng(0).integers(0, v, size=(3, 13)), tf.int32)
  batch = lambda a, b: {"inputs": ids[:, a:b - 1], "targets": ids[:, a + 1:b],
                        "weights": tf.ones([3, b - a - 1])}
  whole, _, _ = m.loss(batch(0, 13), m.initial_state(3), training=False)
  first, m1, s = m.loss(batch(0, 7), m.initial_state(3), training=False)
  second, m2, _ = m.loss(batch(6, 13), s, training=False)
  combined = (m1["nll_sum"] + m2["nll_sum"]) / (m1["num_tokens"] + m2["num_tokens"])
  np.testing.assert_allclose(float(combined), float(whole), rtol=1e-5)


def test_char_model_embeds_words_outside_the_vocabulary():
  from tfsys.data import chars
  m, _ = _tiny()
  e = m.embed_chars(chars.encode_words_tf(tf.constant(["w3", "neverseen"]),
                                          m.config.max_word_length))
  inside = m.embed_ids(tf.constant([[5]]))[0, 0]  # id 5 is "w3"
  np.testing.assert_allclose(e[0].numpy(), inside.numpy(), rtol=1e-6)
  assert not np.allclose(e[0].numpy(), e[1].numpy())


def test_sampled_softmax_approaches_full_softmax():
  errors = []
  for samples in (5, 50, 399):
    tf.random.set_seed(0)
    m, v = _tiny("word", num_samples=samples, vocab=400)
    ids = tf.constant(np.random.default_rng(0).integers(0, v, size=(4, 9)), tf.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([4, 8])}
    full, _, _ = m.loss(batch, m.initial_state(4), training=False)
    sampled = np.mean([float(m.loss(batch, m.initial_state(4), training=True, step=k)[0])
                       for k in range(10)])   # the negatives are a function of the step
    errors.append(abs(sampled - float(full)) / float(full))
  assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors


@pytest.mark.parametrize("kind,num_samples,dropout", [("char_cnn", 0, 0.5),   # dropout alone
                                                     ("word", 10, 0.0),       # negatives alone
                                                     ("word", 10, 0.3)])
def test_training_draws_are_a_function_of_seed_step_and_replica(kind, num_samples, dropout):
  """What a resumed run needs: the same (seed, step, replica) gives the same loss to the bit
  however often and in whatever order it is computed; another step or replica gives another
  draw. Evaluation does not depend on them."""
  # Weights large enough that a different mask moves the loss well above float32 rounding.
  m, v = _tiny(kind, num_samples=num_samples, vocab=40, dropout=dropout, init_scale=0.5)
  ids = tf.constant(np.random.default_rng(0).integers(0, v, size=(3, 9)), tf.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([3, 8])}
  loss = lambda training=True, **kw: float(m.loss(batch, m.initial_state(3), training, **kw)[0])
  step = tf.Variable(5, dtype=tf.int64)                  # as the training loop passes it
  traced = tf.function(lambda: m.loss(batch, m.initial_state(3), True, step=step, replica=1)[0])
  first = loss(step=5, replica=1)
  others = [loss(step=4, replica=1), loss(step=6, replica=1), loss(step=5, replica=0),
            loss(step=5, replica=2)]
  assert loss(step=5, replica=1) == first
  # Traced (as in training) the graph's kernels may round differently, but the draw is the same.
  assert float(traced()) == pytest.approx(first, rel=1e-6)
  assert len({first, *others}) == 5, (first, others)
  assert loss(step=5) == loss(step=5, replica=0)         # no replica context: replica 0
  assert loss(False, step=5, replica=1) == loss(False) == loss(False, step=9)
  # A different model seed, a different draw.
  m.seed = 1234
  assert loss(step=5, replica=1) != first


def test_config_from_before_forget_bias_and_zero_pad_keeps_their_old_meaning():
  """A workdir's config.json written before these keys existed loads with the old model."""
  import ml_collections
  cfg = ptb_char_cnn_lstm.get_config("smoke").model
  words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(20)]
  old = cfg.to_dict()
  del old["forget_bias"], old["zero_pad_chars"]
  explicit = dict(old, forget_bias=1.0, zero_pad_chars=False)
  ids = tf.constant(np.random.default_rng(1).integers(0, len(words), size=(2, 6)), tf.int32)
  out = {}
  for name, c in (("old", old), ("explicit", explicit), ("kim", cfg.to_dict())):
    m = models.build(ml_collections.ConfigDict(c), words, seed=3)
    out[name] = m.hidden(m.embed_ids(ids), m.initial_state(2), training=False)[0].numpy()
  np.testing.assert_allclose(out["old"], out["explicit"], rtol=1e-6)
  # The PTB config differs on both.
  assert np.abs(out["old"] - out["kim"]).max() > 0.01 * np.abs(out["old"]).max()


@pytest.mark.parametrize("kind,low,samples", [("char_cnn", tf.bfloat16, 0), ("word", tf.bfloat16, 0),
                                              ("word", tf.float16, 0), ("word", tf.bfloat16, 10)])
def test_bfloat16_training_loss_and_gradients_are_float32s_to_its_rounding(kind, low, samples):
  """train.precision=bfloat16 (and float16): the same draws (dropout masks from float32's), the
  loss and every gradient within the rounding of float32's, variables, gradients and state in
  float32; evaluation computes in float32 whatever the training precision. With a sampled
  softmax its matmul is in the low precision too (the same negatives drawn)."""
  m, v = _tiny(kind, num_samples=samples, vocab=40, dropout=0.3, init_scale=0.5)
  ids = tf.constant(np.random.default_rng(0).integers(0, v, size=(3, 9)), tf.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([3, 8])}
  results = {}
  for dtype in (tf.float32, low):
    m.compute_dtype = dtype
    with tf.GradientTape() as tape:
      loss, _, state = m.loss(batch, m.initial_state(3), training=True, step=5)
    grads = tape.gradient(loss, m.trainable_variables)
    results[dtype] = (float(loss), [tf.convert_to_tensor(g) for g in grads], state,
                      float(m.loss(batch, m.initial_state(3), training=False)[0]))
  loss32, grads32, _, eval32 = results[tf.float32]
  loss16, grads16, state16, eval16 = results[low]
  assert loss16 == pytest.approx(loss32, rel=0.02) and loss16 != loss32
  assert eval16 == eval32                                     # evaluation: float32
  assert all(s.dtype == tf.float32 for s in tf.nest.flatten(state16))
  for var, g32, g16 in zip(m.trainable_variables, grads32, grads16):
    assert g16.dtype == tf.float32, var.name
    assert float(tf.norm(g16 - g32)) <= 0.05 * float(tf.norm(g32)) + 1e-7, var.name


def test_bfloat16_training_steps_lower_the_loss():
  m, v = _tiny("char_cnn", vocab=40, dropout=0.0, init_scale=0.1)
  m.compute_dtype = tf.bfloat16
  ids = tf.constant(np.random.default_rng(0).integers(0, v, size=(4, 11)), tf.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([4, 10])}
  variables = m.trainable_variables

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss, _, _ = m.loss(batch, m.initial_state(4), training=True, step=0)
    for var, g in zip(variables, tape.gradient(loss, variables)):
      var.assign_sub(1.0 * tf.convert_to_tensor(g))
    return loss
  losses = [float(step()) for _ in range(8)]
  assert all(np.isfinite(losses)) and all(b < a for a, b in zip(losses, losses[1:])), losses
  assert losses[-1] < losses[0] - 0.1, losses
