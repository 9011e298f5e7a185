"""The sentence VAE's serving module in process (tfsys/serving/vae.py): scoring in slices of
score_rows sentences, and the float inputs refused when not finite. The whole contract through a
SavedModel is tested in tests/test_vae_end_to_end.py."""
import numpy as np
import pytest

from tests.test_export import _untrained

pytestmark = pytest.mark.kernels   # serving: .ci/run repeats these with oneDNN on and off

# The first sentence again at row 3, the first row of the second slice of 3.
BATCH = ["the company said", "", "stocks fell", "the company said", "a " * 40,
         "it is", "report", "zzyzx"]


def _server(tmp_path, config_name):
  """An untrained model of the config's :smoke variant, and its server by score_rows."""
  from tfsys.serving import in_process_server
  config, vocab, model = _untrained(config_name)
  return model, lambda rows: in_process_server(model, vocab, str(tmp_path),
                                               config.data.max_length, score_rows=rows)


def _counting_rows(model):
  """Makes the model record the most sentences it decodes in one call; returns that record."""
  import tensorflow as tf
  most = tf.Variable(0)
  reconstruction_nll = model.reconstruction_nll

  def counting(batch, z, **kw):
    most.assign(tf.maximum(most, tf.shape(batch["inputs"])[0]))
    return reconstruction_nll(batch, z, **kw)
  model.reconstruction_nll = counting
  return most


def test_an_rnnlm_scores_the_same_in_slices(tmp_path):
  import tensorflow as tf
  model, server = _server(tmp_path, "ptb_rnnlm")
  most = _counting_rows(model)
  whole = server(10**6).score(tf.constant(BATCH))
  most.assign(0)
  sliced = server(3).score(tf.constant(BATCH))
  assert int(most.numpy()) == 3
  for key in whole:
    np.testing.assert_allclose(sliced[key].numpy(), whole[key].numpy(), rtol=2e-6, atol=0)
  assert sliced["truncated"].numpy().tolist() == [False] * 4 + [True] + [False] * 3  # max_length 30


def test_a_vae_draws_its_importance_samples_per_slice(tmp_path):
  import tensorflow as tf
  model, server = _server(tmp_path, "ptb_vae")
  most = _counting_rows(model)
  whole = server(10**6).score(tf.constant(BATCH))
  most.assign(0)
  sliced = server(3).score(tf.constant(BATCH))
  assert int(most.numpy()) == 3
  # What has no noise is equal for every row; the first slice draws what the whole batch drew.
  for key in ("kl", "num_tokens", "truncated"):
    np.testing.assert_allclose(sliced[key].numpy(), whole[key].numpy(), rtol=2e-6)
  for key in ("iw_nll", "elbo", "reconstruction_nll"):
    np.testing.assert_allclose(sliced[key].numpy()[:3], whole[key].numpy()[:3], rtol=2e-6)
    assert np.all(np.isfinite(sliced[key].numpy()))
  # Slices do not share noise: the same sentence first in two slices gets two estimates.
  assert sliced["iw_nll"].numpy()[0] != sliced["iw_nll"].numpy()[3]
  empty = server(3).score(tf.constant([], tf.string))
  assert {k: v.shape.as_list() for k, v in empty.items()} == {k: [0] for k in whole}


def test_a_vae_refuses_a_non_finite_z_or_temperature(tmp_path):
  import tensorflow as tf
  _, server = _server(tmp_path, "ptb_vae")
  vae = server(3)
  z = np.zeros([2, vae.latent_dim], np.float32)
  assert vae.decode(tf.constant(z), 0.0, 0)["text"].shape == [2]
  for bad in (np.nan, np.inf):
    z[1, 0] = bad    # once decoded to whatever argmax made of NaN logits
    with pytest.raises(tf.errors.InvalidArgumentError, match="z must be finite"):
      vae.decode(tf.constant(z), 0.0, 0)
  for t in (-1.0, np.nan, np.inf):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"temperature must be >= 0 and finite \(0 = greedy\), got"):
      vae.sample(2, t, 0)
