"""scripts/plot_results.py draws valid PNGs from the recorded numbers and from a step-times file."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "plot_results.py")
RECORDED = os.path.join(ROOT, "docs", "results", "recorded.json")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_spec = importlib.util.spec_from_file_location("plot_results", SCRIPT)
plot_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_results)  # defines its absl flags once in this process


def _assert_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR"
  width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
  assert width >= 400 and height >= 300, (width, height)


def _step_times(path, steps=40, warmup=10):
  """A small file in bench/backup_workers.py --steps_out's format."""
  rng = np.random.default_rng(0)
  def run(base, tail):
    return [round(float(base + tail * rng.pareto(1.5)), 1) for _ in range(steps)]
  data = {"n": 3, "steps": steps, "compute_ms": 30.0, "warmup": warmup,
          "scenarios": {"one": "worker 0 late every step", "all": "every worker late, p = 0.1"},
          "step_ms": {"ideal": run(45, 2), "one_b0": run(90, 40), "one_b1": run(46, 3),
                      "all_b0": run(60, 20), "all_b1": run(50, 10)}}
  path.write_text(json.dumps(data))
  return str(path)


def test_recorded_numbers_have_the_shape_the_plots_need():
  with open(RECORDED) as f:
    recorded = json.load(f)
  for run in recorded["ptb_char_cnn_lstm"]["runs"]:
    assert len(run["valid_perplexity"]) == 25 and run["source"]
    assert all(1 <= e <= 25 for e in run["halved_epochs"])
  for model in recorded["ptb_vae"]["models"]:
    assert len(model["nll"]) == len(model["epochs"]) and model["source"]
    assert model["kl"] is None or len(model["kl"]) == len(model["epochs"])


def test_plots_from_recorded_numbers_and_step_times(tmp_path):
  with open(RECORDED) as f:
    recorded = json.load(f)
  with open(_step_times(tmp_path / "steps.json")) as f:
    steps = json.load(f)
  for path in (plot_results.plot_ptb(recorded, str(tmp_path / "out" / plot_results.PTB_PNG)),
               plot_results.plot_vae(recorded, str(tmp_path / "out" / plot_results.VAE_PNG)),
               plot_results.plot_backup(steps, str(tmp_path / "out" / plot_results.BACKUP_PNG))):
    _assert_png(path)
    assert os.path.getsize(path) < 150_000


def test_script_skips_the_backup_plot_without_step_times(tmp_path):
  out = tmp_path / "docs"
  proc = subprocess.run([sys.executable, SCRIPT, f"--out_dir={out}"], capture_output=True,
                        text=True, timeout=60, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(out)) == [plot_results.PTB_PNG, plot_results.VAE_PNG]
  assert "no --backup_steps" in proc.stdout
  # A missing step-times file: one line, exit status 2, nothing drawn.
  proc = subprocess.run([sys.executable, SCRIPT, f"--out_dir={tmp_path / 'other'}",
                         f"--backup_steps={tmp_path / 'missing.json'}"],
                        capture_output=True, text=True, timeout=60, cwd=ROOT)
  assert proc.returncode == 2 and "cannot read step times" in proc.stderr, proc.stderr
  assert not (tmp_path / "other").exists()
