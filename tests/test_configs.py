"""Every experiment in configs/ builds, and its :smoke variant trains a step (lingvo's habit)."""
import glob
import importlib
import math
import os

import numpy as np
import pytest

from tfsys.train import NonFiniteLossError, train_and_evaluate

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


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  from configs import ptb_word_lstm
  from tfsys.train.evaluate import load_trained
  cfg = ptb_word_lstm.get_config("smoke")
  cfg.train.num_steps = 10
  cfg.train.checkpoint_every = 5
  train_and_evaluate(cfg, str(tmp_path))                   # healthy: ckpt-10
  cfg.train.num_steps = 30
  cfg.optim.learning_rate = float("inf")                   # step 11 makes every weight NaN
  cfg.optim.clip_norm = 0.0
  with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 12; stopping.*ckpt-10\)"):
    train_and_evaluate(cfg, str(tmp_path))
  _, _, model, path = load_trained(str(tmp_path))
  assert path.endswith("ckpt-10")
  assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_diverged_weights_are_never_checkpointed(tmp_path):
  from configs import ptb_word_lstm
  cfg = ptb_word_lstm.get_config("smoke")
  cfg.optim.learning_rate = 1e30       # the loss stays finite, the model does not
  cfg.optim.clip_norm = 0.0
  cfg.train.checkpoint_every = 1000
  cfg.eval.every_steps = 1000
  with pytest.raises(NonFiniteLossError, match="not finite"):
    train_and_evaluate(cfg, str(tmp_path))
  assert not glob.glob(str(tmp_path / "checkpoints" / "ckpt-*.index"))


def test_sentence_vae_variants_change_what_they_name():
  from configs import ptb_rnnlm, ptb_vae
  base = ptb_vae.get_config()
  assert base.model.free_bits == 0.1 and base.model.kl_schedule == "logistic"
  assert ptb_vae.get_config("bowman").model.free_bits == 0.0
  assert ptb_vae.get_config("cyclical").model.kl_schedule == "cyclical"
  assert ptb_vae.get_config("inputless").model.word_dropout == 1.0
  rnnlm = ptb_rnnlm.get_config()   # the baseline: no code, so nothing for free bits to hold up
  assert rnnlm.model.latent_dim == 0 and rnnlm.model.free_bits == 0.0
