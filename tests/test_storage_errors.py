"""A full disk and a read-only directory, for real: a small tmpfs mounted for the test (skipped
where this process may not mount one). Each failure is one line with exit status 4, names the
path, and leaves the last checkpoint readable and nothing half-written behind."""
import contextlib
import glob
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests import warm
from tfsys.errors import StorageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "ptb_char_cnn_lstm.py")


@contextlib.contextmanager
def _tmpfs(path, options):
  path.mkdir()
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True, text=True)
  except OSError:
    mounted = None
  if mounted is None or mounted.returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                + (mounted.stderr.strip() if mounted else "no mount command"))
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False)


def _run(script_and_args, proc=None):
  """subprocess.run of `python SCRIPT ARGS` (in proc, a warm.started() process, if given)."""
  if proc is None:
    return subprocess.run([sys.executable, *script_and_args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  return warm.run(proc, script_and_args, timeout=300)


def _train(workdir, *extra, proc=None):
  return _run(
      [os.path.join(ROOT, "scripts", "train.py"), f"--config={CONFIG}:smoke",
       f"--workdir={workdir}", "--config.train.num_steps=400", "--config.train.checkpoint_every=10",
       "--config.train.keep_checkpoints=100", "--config.eval.every_steps=1000",
       # Few summaries: the disk fills while a checkpoint is written (0.5 MB each), not an event.
       "--config.train.log_every=1000", "--config.train.histogram_every=100000", *extra], proc)


def _one_error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
  with _tmpfs(tmp_path / "small", "size=3m") as disk, warm.started() as second:
    workdir = disk / "run"
    proc = _train(workdir)
    assert proc.returncode == StorageError.exit_status, proc.stderr[-3000:]
    line = _one_error_line(proc)
    assert str(disk) in line and "the disk is full" in line, line
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest is not None
    assert "checkpoints/ckpt-" in line, line
    assert f"The last checkpoint, {os.path.basename(latest)}, is intact" in line, line
    assert "it needed about" in line and "MB free there" in line, line
    reader = tf.train.load_checkpoint(latest)    # intact: every tensor reads back
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
    assert not glob.glob(str(workdir / "checkpoints" / "*_temp"))
    json.loads((workdir / "config.json").read_text())

    again = _train(workdir, proc=second)         # still full: the same kind of line, at once
    assert again.returncode == StorageError.exit_status, again.stderr[-3000:]
    assert "the disk is full" in _one_error_line(again)
    assert not glob.glob(str(workdir / "*.tmp")) and not glob.glob(str(workdir / "checkpoints" / "*_temp"))
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")) == latest


def test_export_into_a_read_only_directory_is_one_line(tmp_path):
  workdir = tmp_path / "run"
  with warm.started() as export:   # (its start-up overlaps the training)
    trained = _train(workdir, "--config.train.num_steps=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
      proc = _run([os.path.join(ROOT, "scripts", "export.py"), f"--workdir={workdir}",
                   f"--export_dir={read_only}"], export)
      assert proc.returncode == StorageError.exit_status, proc.stderr[-3000:]
      line = _one_error_line(proc)
      assert str(read_only) in line and "read-only" in line, line
