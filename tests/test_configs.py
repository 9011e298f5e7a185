"""Every experiment in configs/ builds, and its :smoke variant trains a step (lingvo's habit)."""
import glob
import importlib
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tfsys.train import DivergedError, NonFiniteLossError, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "common")))


def test_the_issue_configs_exist():
  assert {"ptb_char_cnn_lstm", "ptb_word_lstm", "lm1b_lstm_2048_512",
          "lm1b_big_lstm_cnn"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_smoke_trains_a_step(name, tmp_path):
  module = importlib.import_module(f"configs.{name}")
  full = module.get_config()
  assert "python scripts/train.py" in module.__doc__ and "Expected" in module.__doc__
  assert full.train.batch_size > 0
  cfg = module.get_config("smoke")
  cfg.train.num_steps = 2
  cfg.eval.max_tokens = 200
  results = train_and_evaluate(cfg, str(tmp_path))
  assert results["step"] == 2 and math.isfinite(results["test_perplexity"])
  assert os.path.isfile(tmp_path / "config.json") and os.path.isfile(tmp_path / "vocab.txt")
  with pytest.raises(ValueError, match="unknown config variant"):
    module.get_config("nonsense")


@tf.custom_gradient
def _nan_gradient(x):
  return tf.identity(x), lambda dy: dy * float("nan")


# What a poisoned model's training loss becomes from a given step on: the fault is injected,
# so that the test does not depend on how the CPU's kernels handle an absurd learning rate.
POISONS = {
    "nan_loss": lambda loss: loss + float("nan"),           # the gradient stays finite
    "huge_loss": lambda loss: loss + 100.0,                 # finite, far above ln V
    "nan_gradient": _nan_gradient,                          # the loss looks fine, the update is NaN
}


def _poison(monkeypatch, kind, from_step, evaluation=False):
  """Makes models.build return models whose training loss is poisoned from step `from_step`
  (0-based: the step variable's value while the step runs) on; with `evaluation`, the
  evaluation loss instead (from the start)."""
  import models
  build = models.build

  def poisoned_build(*args, **kwargs):
    model = build(*args, **kwargs)
    loss_fn = model.loss

    def loss(batch, state, training, step=0):
      value, metrics, new_state = loss_fn(batch, state, training=training, step=step)
      if evaluation and not training:   # evaluation reads the NLL sum: 100 nats more a token
        metrics = dict(metrics, nll_sum=metrics["nll_sum"] + 100.0 * tf.cast(
            metrics["num_tokens"], metrics["nll_sum"].dtype))
      elif training and not evaluation:
        value = tf.cond(tf.cast(step, tf.int64) >= from_step,
                        lambda: POISONS[kind](value), lambda: tf.identity(value))
      return value, metrics, new_state
    model.loss = loss
    return model
  monkeypatch.setattr(models, "build", poisoned_build)


def _smoke(steps, checkpoint_every=5):
  from configs import ptb_word_lstm
  cfg = ptb_word_lstm.get_config("smoke")
  cfg.train.num_steps = steps
  cfg.train.checkpoint_every = checkpoint_every
  cfg.eval.every_steps = 1000
  return cfg


def _kept(workdir, step):
  from tfsys.train.evaluate import load_trained
  _, _, model, path = load_trained(str(workdir))
  assert path.endswith(f"ckpt-{step}")
  assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


@pytest.mark.kernels
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  train_and_evaluate(_smoke(10), str(tmp_path))            # healthy: ckpt-10
  _poison(monkeypatch, "nan_loss", from_step=11)           # the 12th step's loss is NaN
  with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 12; stopping.*ckpt-10\)"):
    train_and_evaluate(_smoke(30), str(tmp_path))
  _kept(tmp_path, 10)


@pytest.mark.kernels
def test_a_diverged_loss_stops_after_the_warmup(tmp_path, monkeypatch):
  _poison(monkeypatch, "huge_loss", from_step=12)          # the 13th step's loss is ~107
  with pytest.raises(DivergedError, match=r"loss 10\d\.?\d* at step 13 is above 2 x ln V = "
                                          r"15\.20 .*2000 words.*ckpt-10\)"):
    train_and_evaluate(_smoke(30), str(tmp_path / "a"))
  _kept(tmp_path / "a", 10)
  cfg = _smoke(30)
  cfg.optim.warmup_steps = 16                              # within the warm-up it carries on
  with pytest.raises(DivergedError, match=r"at step 17 .*ckpt-15\)"):
    train_and_evaluate(cfg, str(tmp_path / "b"))
  _kept(tmp_path / "b", 15)
  cfg = _smoke(20)
  cfg.train.divergence_factor = 0.0                        # off: the run ends normally
  assert train_and_evaluate(cfg, str(tmp_path / "c"))["step"] == 20


@pytest.mark.kernels
def test_a_diverged_validation_loss_stops_before_the_checkpoint(tmp_path, monkeypatch):
  _poison(monkeypatch, "huge_loss", from_step=0, evaluation=True)   # training is healthy
  cfg = _smoke(30)
  cfg.eval.every_steps = 10                                # evaluated before step 10 is saved
  with pytest.raises(DivergedError, match=r"validation loss 10\d\.?\d* at step 10 is above 2 x "
                                          r"ln V.*ckpt-5\)"):
    train_and_evaluate(cfg, str(tmp_path))


@pytest.mark.kernels
def test_diverged_weights_are_never_checkpointed(tmp_path, monkeypatch):
  _poison(monkeypatch, "nan_gradient", from_step=9)        # the 10th step's update is NaN
  with pytest.raises(NonFiniteLossError, match="weights .* are not finite at step 10"):
    train_and_evaluate(_smoke(30, checkpoint_every=10), str(tmp_path))
  assert not glob.glob(str(tmp_path / "checkpoints" / "ckpt-*.index"))


def test_bad_divergence_factor_is_one_line(tmp_path):
  from tfsys.errors import UserError
  cfg = _smoke(2)
  cfg.train.divergence_factor = 0.5
  with pytest.raises(UserError, match="divergence_factor must be above 1"):
    train_and_evaluate(cfg, str(tmp_path))


def test_sentence_vae_variants_change_what_they_name():
  from configs import ptb_rnnlm, ptb_vae
  base = ptb_vae.get_config()
  assert base.model.free_bits == 0.1 and base.model.kl_schedule == "logistic"
  assert ptb_vae.get_config("bowman").model.free_bits == 0.0
  assert ptb_vae.get_config("cyclical").model.kl_schedule == "cyclical"
  assert ptb_vae.get_config("inputless").model.word_dropout == 1.0
  rnnlm = ptb_rnnlm.get_config()   # the baseline: no code, so nothing for free bits to hold up
  assert rnnlm.model.latent_dim == 0 and rnnlm.model.free_bits == 0.0
