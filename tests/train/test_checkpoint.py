import glob
import os

import pytest
import tensorflow as tf

from tfsys.errors import UserError
from tfsys.train.checkpoint import Checkpointer


def _ckpt(workdir, value):
  v = tf.Variable(value)
  return v, Checkpointer(str(workdir), keep=3, v=v)


def _saved_at_10_and_20(workdir):
  """Checkpoints of v = 1.0 at step 10 and v = 2.0 at step 20."""
  v, c = _ckpt(workdir, 1.0)
  c.save(10)
  v.assign(2.0)
  c.save(20)


def test_restore_latest(tmp_path):
  _saved_at_10_and_20(tmp_path)
  w, c2 = _ckpt(tmp_path, 0.0)
  assert c2.restore_latest().endswith("ckpt-20") and float(w) == 2.0


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path):
  v, c = _ckpt(tmp_path, 1.0)
  c.save(10)
  # What a process killed while writing step 20 leaves: temporary files, index not updated.
  tmp = tmp_path / "checkpoints" / "ckpt-20_temp"
  tmp.mkdir()
  (tmp / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 100)
  w, c2 = _ckpt(tmp_path, 0.0)
  assert c2.restore_latest().endswith("ckpt-10") and float(w) == 1.0


def test_an_unreadable_latest_checkpoint_falls_back_to_an_older_one(tmp_path):
  _saved_at_10_and_20(tmp_path)
  for f in glob.glob(str(tmp_path / "checkpoints" / "ckpt-20.*")):
    with open(f, "r+b") as fh:
      fh.truncate(3)
  w, c2 = _ckpt(tmp_path, 0.0)
  assert c2.restore_latest().endswith("ckpt-10") and float(w) == 1.0


def test_all_unreadable_is_a_clear_error(tmp_path):
  v, c = _ckpt(tmp_path, 1.0)
  c.save(10)
  for f in glob.glob(str(tmp_path / "checkpoints" / "ckpt-10.*")):
    os.truncate(f, 2)
  with pytest.raises(UserError, match="no checkpoint .* can be restored"):
    _ckpt(tmp_path, 0.0)[1].restore_latest()


def test_no_checkpoint(tmp_path):
  assert _ckpt(tmp_path, 0.0)[1].restore_latest() is None
