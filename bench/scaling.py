"""Weak scaling of synchronous data parallelism on this machine: 1 worker vs 2 workers.

  python bench/scaling.py [--steps=150] [--config=configs/ptb_char_cnn_lstm.py]

Trains the language model through the real scripts: one process (backend single) with one
intra-op thread, then two worker processes (backend multi_worker, started by
scripts/launch_local.py on 127.0.0.1) with one thread each, the same batch per worker (so the
global batch doubles). Throughput is each run's steady-state words/s (results.json; the first
logging interval, with tracing, is not timed). Efficiency = throughput(2) / (2 x throughput(1)).
Run it on a quiet machine: it prints the background CPU load it started with. The last line is
one JSON object.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from bench.common import background_busy  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 150, "timed steps per run")
_CONFIG = flags.DEFINE_string("config", "configs/ptb_char_cnn_lstm.py", "experiment")
_BATCH = flags.DEFINE_integer("batch_per_worker", 20, "rows per worker")


def _train_args(workdir, batch, backend):
  return [os.path.join(ROOT, "scripts", "train.py"), f"--config={os.path.join(ROOT, _CONFIG.value)}",
          f"--workdir={workdir}", f"--config.train.batch_size={batch}",
          f"--config.distribute.backend={backend}", "--config.distribute.intra_op_threads=1",
          f"--config.train.num_steps={_STEPS.value + 25}", "--config.train.log_every=25",
          "--config.train.checkpoint_every=1000000", "--config.train.histogram_every=1000000",
          "--config.eval.every_steps=1000000", "--config.eval.max_tokens=100",
          "--config.eval.num_samples=0", "--config.monitor.noise_scale_every=0"]


def _words_per_sec(cmd, workdir) -> float:
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    raise SystemExit(f"run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)["words_per_sec"]


def main(argv):
  del argv
  busy = background_busy()
  print(f"background CPU load before measuring: {busy:.0%}"
        + ("  (not quiet: figures will be low)" if busy > 0.15 else ""))
  b = _BATCH.value
  with tempfile.TemporaryDirectory() as tmp:
    one = _words_per_sec([sys.executable, *_train_args(f"{tmp}/one", b, "single")], f"{tmp}/one")
    print(f"1 worker,  batch {b}:      {one:.0f} words/s")
    two = _words_per_sec([sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"),
                          "--num_workers=2", "--", *_train_args(f"{tmp}/two", 2 * b, "multi_worker")],
                         f"{tmp}/two")
    print(f"2 workers, batch {2 * b} (global): {two:.0f} words/s")
  efficiency = two / (2 * one)
  print(f"weak-scaling efficiency: {efficiency:.2f}")
  print(json.dumps({"one_worker_words_per_sec": round(one, 1), "two_workers_words_per_sec": round(two, 1),
                    "efficiency": round(efficiency, 3), "background_busy": round(busy, 3)}))


if __name__ == "__main__":
  app.run(main)
