"""The sentence VAE against closed forms: KL, schedules, the importance-weighted bound, word
dropout, free bits, and the posterior-collapse diagnostics."""
import math

import numpy as np
import pytest
import tensorflow as tf

import models
from configs import ptb_vae
from models.sentence_vae import kl_to_standard_normal, kl_weight, variable_shapes
from tfsys.data.sentences import batch_of
from tfsys.errors import UserError
from tfsys.train.tasks import active_units, mutual_information

pytestmark = pytest.mark.kernels   # numerics: .ci/run repeats these with oneDNN on and off

WORDS = ["<unk>", "<eos>"] + [f"w{i}" for i in range(30)]


def _config(**overrides):
  cfg = ptb_vae.get_config("smoke").model
  cfg.dropout = 0.0
  cfg.free_bits = 0.0   # the plain objective; the free-bits test sets its own
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _batch(seed=0, n=6):
  rng = np.random.default_rng(seed)
  sentences = [rng.integers(2, len(WORDS), size=rng.integers(1, 9)).astype(np.int32)
               for _ in range(n)]
  return {k: tf.constant(v) for k, v in batch_of(sentences, WORDS.index("<eos>")).items()}


def test_kl_of_a_diagonal_gaussian_matches_the_closed_form():
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=[4, 5]), rng.normal(size=[4, 5])
  expected = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar)
  got = kl_to_standard_normal(tf.constant(mean, tf.float32), tf.constant(logvar, tf.float32))
  np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
  assert np.all(kl_to_standard_normal(tf.zeros([2, 3]), tf.zeros([2, 3])).numpy() == 0.0)


def test_kl_schedules_at_known_steps():
  c = _config(kl_anneal_steps=1000, kl_cycle_steps=400, kl_cycle_ratio=0.5)
  w = lambda schedule, step: float(kl_weight(_with(c, kl_schedule=schedule), step))  # noqa: E731
  assert w("logistic", 500) == pytest.approx(0.5)
  assert w("logistic", 0) == pytest.approx(1 / (1 + math.exp(6)), rel=1e-4)
  assert w("logistic", 1000) == pytest.approx(1 / (1 + math.exp(-6)), rel=1e-4)
  assert w("linear", 250) == pytest.approx(0.25) and w("linear", 5000) == 1.0
  assert w("cyclical", 100) == pytest.approx(0.5)    # rising over the first 200 of 400
  assert w("cyclical", 300) == 1.0 and w("cyclical", 400) == 0.0   # a new cycle starts at 0
  assert w("cyclical", 500) == pytest.approx(0.5)
  assert w("constant", 0) == 1.0
  with pytest.raises(UserError, match="kl_schedule must be one of"):
    models.build(_config(kl_schedule="sigmoid"), WORDS)


def _with(cfg, **changes):
  cfg = cfg.copy_and_resolve_references()
  for k, v in changes.items():
    cfg[k] = v
  return cfg


def test_model_has_exactly_the_declared_variables_and_the_rnnlm_has_no_encoder():
  for latent in (8, 0):
    cfg = _config(latent_dim=latent)
    m = models.build(cfg, WORDS)
    got = {v.name.split(":")[0]: list(v.shape) for v in m.trainable_variables}
    assert got == variable_shapes(cfg, len(WORDS))
  assert not any(name.startswith(("enc", "posterior")) for name in got)


def _separated(model):
  """A broad posterior (σ² = e^1.5) and a decoder that depends strongly on z: log p(x, z) /
  q(z|x) varies a lot from sample to sample, so the bounds differ clearly."""
  d = model.latent_dim
  model.params["posterior_b"].assign(tf.concat([tf.zeros([d]), tf.fill([d], 1.5)], 0))
  model.params["dec_init_w"].assign(model.params["dec_init_w"] * 50.0)
  return model


def test_importance_weighted_bound_is_above_the_elbo_and_tightens_with_k():
  model = _separated(models.build(_config(latent_dim=8), WORDS, seed=1))
  batch = _batch()
  seed = tf.constant([3, 0])
  out = {k: model.evaluate_batch(batch, tf.constant(k), seed) for k in (1, 10, 100)}
  for k, o in out.items():   # Jensen, exactly, for the same samples
    assert np.all(o["log_px"].numpy() >= o["elbo"].numpy() - 1e-4), k
  np.testing.assert_allclose(out[1]["log_px"], out[1]["elbo"], rtol=1e-6)   # k = 1: the ELBO
  bound = {k: float(tf.reduce_sum(o["log_px"])) for k, o in out.items()}
  assert bound[1] < bound[10] < bound[100]
  # The ELBO in closed-form KL (reconstruction averaged over the 100 samples' estimate) is below.
  elbo = float(tf.reduce_sum(out[100]["elbo"]))
  assert bound[100] > elbo


def test_rnnlm_bound_is_its_exact_likelihood():
  model = models.build(_config(latent_dim=0), WORDS)
  out = model.evaluate_batch(_batch(), tf.constant(5), tf.constant([0, 0]))
  np.testing.assert_allclose(out["log_px"], -out["rec_nll"], rtol=1e-6)
  assert np.all(out["kl"].numpy() == 0.0)


def test_word_dropout_one_makes_the_decoder_inputless():
  batch = _batch()
  shuffled = dict(batch, inputs=tf.concat([batch["inputs"][:, :1],
                                           tf.reverse(batch["inputs"][:, 1:], [1])], 1))
  for rate, same in ((1.0, True), (0.0, False)):
    model = models.build(_config(latent_dim=0, word_dropout=rate), WORDS)
    a = float(model.loss(batch, (), training=True)[0])
    b = float(model.loss(shuffled, (), training=True)[0])
    assert (a == pytest.approx(b, rel=1e-6)) == same, rate


def test_free_bits_raise_each_dimensions_kl_to_the_floor():
  batch = _batch()
  losses = {}
  for bits in (0.0, 3.0):
    model = models.build(_config(latent_dim=8, free_bits=bits, kl_schedule="constant"), WORDS)
    loss, metrics, _ = model.loss(batch, (), training=True, step=0)   # the same z: (seed, step)
    losses[bits] = (float(loss), metrics)
  (l0, m0), (l3, _) = losses[0.0], losses[3.0]
  n, tokens = float(m0["num_sentences"]), float(m0["num_tokens"])
  kl = float(m0["kl_sum"])
  assert kl / n / 8 < 3.0                     # an untrained posterior: below the floor everywhere
  assert l3 - l0 == pytest.approx((n * 8 * 3.0 - kl) / tokens, rel=1e-4)


def test_kl_weight_scales_only_the_kl_in_training():
  batch = _batch()
  model = models.build(_config(latent_dim=8, kl_schedule="linear", kl_anneal_steps=100), WORDS)
  l0, m0, _ = model.loss(batch, (), training=True, step=0)       # β = 0: reconstruction only
  np.testing.assert_allclose(float(l0), float(m0["nll_sum"] / m0["num_tokens"]), rtol=1e-6)
  l1, m1, _ = model.loss(batch, (), training=True, step=50)      # β = 0.5
  expected = (float(m1["nll_sum"]) + 0.5 * float(m1["kl_sum"])) / float(m1["num_tokens"])
  assert float(l1) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("overrides", [dict(latent_dim=8),                        # z alone
                                       dict(latent_dim=0, word_dropout=0.5),    # word dropout
                                       dict(latent_dim=0, dropout=0.5),         # dropout
                                       dict(latent_dim=8, word_dropout=0.25, dropout=0.5)],
                         ids=["z", "word_dropout", "dropout", "all"])
def test_training_draws_are_a_function_of_seed_step_and_replica(overrides):
  """What a resumed run needs: the same (seed, step, replica) gives the same loss to the bit
  however often and in whatever order it is computed; another step or replica gives another
  draw. Evaluation does not depend on them."""
  # Weights large enough that another draw moves the loss well above float32 rounding.
  model = models.build(_config(**{"word_dropout": 0.0, "init_scale": 0.5, **overrides}), WORDS,
                       seed=1)
  batch = _batch(n=8)
  loss = lambda training=True, **kw: float(model.loss(batch, (), training, **kw)[0])
  step = tf.Variable(5, dtype=tf.int64)                  # as the training loop passes it
  traced = tf.function(lambda: model.loss(batch, (), True, step=step, replica=1)[0])
  first = loss(step=5, replica=1)
  others = [loss(step=4, replica=1), loss(step=6, replica=1), loss(step=5, replica=0),
            loss(step=5, replica=2)]
  assert loss(step=5, replica=1) == first
  assert float(traced()) == pytest.approx(first, rel=1e-6)   # the same draw in a graph
  assert len({first, *others}) == 5, (first, others)
  assert loss(step=5) == loss(step=5, replica=0)         # no replica context: replica 0
  assert loss(False, step=5, replica=1) == loss(False, step=5, replica=1)   # deterministic
  if not overrides["latent_dim"]:                        # nothing random left in evaluation
    assert loss(False) == loss(False, step=9, replica=3)


def test_z_is_reparameterised():
  """At β = 0 the objective is the reconstruction alone: the posterior's parameters get a
  gradient only through z = μ + σ ε."""
  model = models.build(_config(latent_dim=8, kl_schedule="linear", kl_anneal_steps=100), WORDS)
  with tf.GradientTape() as tape:
    loss, _, _ = model.loss(_batch(), (), training=True, step=0)
  grads = tape.gradient(loss, [model.params["posterior_w"], model.params["posterior_b"]])
  for g in grads:
    mean_part, logvar_part = np.split(g.numpy(), 2, axis=-1)
    assert np.abs(mean_part).max() > 0 and np.abs(logvar_part).max() > 0


def test_active_units_and_mutual_information_against_known_posteriors():
  rng = np.random.default_rng(0)
  mean = np.zeros([200, 4])
  mean[:, 1] = rng.normal(scale=1.0, size=200)   # one dimension varies across sentences
  assert active_units(mean) == 1
  # Every sentence the same posterior: z says nothing about x.
  same = np.zeros([300, 3]), np.zeros([300, 3])
  assert abs(mutual_information(*same)) < 0.25   # Monte Carlo: ~0.07 standard deviation here
  # Far-apart, sharp posteriors: z identifies x, I(x; z) = log N.
  apart = np.arange(300)[:, None] * np.ones([1, 3]) * 10.0, np.full([300, 3], -10.0)
  assert mutual_information(*apart) == pytest.approx(math.log(300), abs=0.25)


def test_decode_ends_rows_at_eos_and_respects_max_words():
  model = models.build(_config(latent_dim=8), WORDS)
  z = tf.random.normal([3, 8])
  ids = model.decode(z, model.decoder_state(z, 3), tf.fill([3], model.eos_id), 4,
                     tf.constant(1.0), tf.constant([0, 0])).numpy()
  assert ids.shape[0] == 3 and ids.shape[1] <= 5
  for row in ids:
    ends = np.flatnonzero(row == model.eos_id)
    assert len(ends) and ends[0] <= 4          # every row ends, by max_words at the latest
