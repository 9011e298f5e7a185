import json
import os

import pytest

from configs import ptb_char_cnn_lstm
from tfsys.errors import UserError
from tfsys.train import workdir


def test_writes_config_json_and_allows_compatible_changes(tmp_path):
  cfg = ptb_char_cnn_lstm.get_config("smoke")
  assert not workdir.prepare(cfg, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["lstm_units"] == 32
  cfg.train.num_steps = 500            # training longer is a compatible change
  cfg.optim.learning_rate = 0.5
  assert workdir.prepare(cfg, str(tmp_path))
  assert workdir.load_config(str(tmp_path)).train.num_steps == 500


def test_incompatible_resume_names_the_keys(tmp_path):
  cfg = ptb_char_cnn_lstm.get_config("smoke")
  workdir.prepare(cfg, str(tmp_path))
  cfg.model.lstm_units = 64
  cfg.train.batch_size = 8
  with pytest.raises(UserError, match=r"model.lstm_units: 32 -> 64; train.batch_size: 4 -> 8"):
    workdir.prepare(cfg, str(tmp_path))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UserError, match="not writable"):
    workdir.prepare(ptb_char_cnn_lstm.get_config("smoke"), str(blocker / "run"))
  if os.geteuid() != 0:  # root can write anywhere
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable"):
      workdir.prepare(ptb_char_cnn_lstm.get_config("smoke"), str(ro))
