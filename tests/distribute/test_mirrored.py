"""Data parallelism on one host: MirroredStrategy over 2 logical CPUs against one device."""
import os
import subprocess
import sys

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(workdir, backend):
  # A separate process: logical CPU devices must be configured before TensorFlow starts.
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
         f"--config={ROOT}/configs/ptb_char_cnn_lstm.py:smoke", f"--workdir={workdir}",
         f"--config.distribute.backend={backend}", "--config.distribute.num_logical_cpus=2",
         # Dropout masks are drawn per replica, so switch it off to compare exactly.
         "--config.model.dropout=0", "--config.model.embedding_dropout=0",
         "--config.train.num_steps=12", "--config.train.log_every=1", "--config.eval.max_tokens=100"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "train"),
                                           size_guidance={"tensors": 0})
  acc.Reload()
  values = lambda tag: np.array([float(tf_make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)])
  noise = {t: values(t) for t in ("noise/b_simple", "noise/grad_sq_norm", "noise/trace_sigma")
           if t in acc.Tags()["tensors"]}
  return values("train/loss"), noise


def tf_make_ndarray(proto):
  import tensorflow as tf
  return tf.make_ndarray(proto)


def test_mirrored_matches_single_with_the_same_global_batch(tmp_path):
  single, no_noise = _losses(str(tmp_path / "single"), "single")
  mirrored, noise = _losses(str(tmp_path / "mirrored"), "mirrored")
  assert len(single) == len(mirrored) == 12
  assert single[-1] < single[0]                      # it learns
  np.testing.assert_allclose(mirrored, single, rtol=2e-4)
  # The noise scale needs two batch sizes: written with 2 replicas, not with one.
  assert not no_noise and len(noise["noise/b_simple"]) == 1   # every 10 steps, 12 steps
  assert noise["noise/grad_sq_norm"][0] > 0 and np.isfinite(noise["noise/b_simple"]).all()
