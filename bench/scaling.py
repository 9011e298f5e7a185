"""Weak scaling of synchronous data parallelism on this machine: 1 worker vs 2 workers.

  python bench/scaling.py [--steps=150] [--config=configs/ptb_char_cnn_lstm.py]

Trains the language model through the real scripts: one process (backend single) with one
intra-op thread, then two worker processes (backend multi_worker, started by
scripts/launch_local.py on 127.0.0.1) with one thread each, the same batch per worker (so the
global batch doubles). Throughput is each run's steady-state words/s (results.json; the first
logging interval, with tracing, is not timed). Efficiency = throughput(2) / (2 x throughput(1)).
It also runs two independent single-worker processes at once (no communication at all): their
summed throughput over 2 x throughput(1) is the ceiling this machine itself puts on weak
scaling (two processes share its memory bandwidth and caches), so the efficiency can be read
against it. Run it on a quiet machine: it prints the background CPU load it started with. The
last line is one JSON object. --variants adds 2-worker runs with other all-reduce options
(distribute.allreduce_dtype, distribute.allreduce_pack_mb), each with its efficiency.
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
_VARIANTS = flags.DEFINE_list(
    "variants", ["distribute.allreduce_dtype=bfloat16"],
    "more 2-worker runs, each with these overrides (KEY=VALUE[;KEY=VALUE]): the all-reduce's "
    "options, measured in the same run")


def _train_args(workdir, batch, backend):
  return [os.path.join(ROOT, "scripts", "train.py"), f"--config={os.path.join(ROOT, _CONFIG.value)}",
          f"--workdir={workdir}", f"--config.train.batch_size={batch}",
          f"--config.distribute.backend={backend}", "--config.distribute.intra_op_threads=1",
          f"--config.train.num_steps={_STEPS.value + 25}", "--config.train.log_every=25",
          "--config.train.checkpoint_every=1000000", "--config.train.histogram_every=1000000",
          "--config.eval.every_steps=1000000", "--config.eval.max_tokens=100",
          "--config.eval.num_samples=0", "--config.monitor.noise_scale_every=0"]


def _words_per_sec(cmds, workdirs) -> list[float]:
  """Runs the commands at the same time; the steady words/s of each."""
  procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
           for c in cmds]
  outs = [p.communicate()[0] for p in procs]
  for p, out in zip(procs, outs):
    if p.returncode:
      raise SystemExit(f"run failed:\n{out[-3000:]}")
  result = []
  for w in workdirs:
    with open(os.path.join(w, "results.json")) as f:
      result.append(json.load(f)["words_per_sec"])
  return result


def main(argv):
  del argv
  busy = background_busy()
  print(f"background CPU load before measuring: {busy:.0%}"
        + ("  (not quiet: figures will be low)" if busy > 0.15 else ""))
  b = _BATCH.value
  single = lambda w: [sys.executable, *_train_args(w, b, "single")]
  with tempfile.TemporaryDirectory() as tmp:
    (one,) = _words_per_sec([single(f"{tmp}/one")], [f"{tmp}/one"])
    print(f"1 worker,  batch {b}:             {one:.0f} words/s")
    def two_workers(name, overrides=()):
      workdir = f"{tmp}/{name}"
      return _words_per_sec([[sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"),
                              "--num_workers=2", "--", *_train_args(workdir, 2 * b, "multi_worker"),
                              *(f"--config.{o}" for o in overrides)]], [workdir])[0]
    two = two_workers("two")
    print(f"2 workers, batch {2 * b} (global):   {two:.0f} words/s")
    variants = {}
    for k, v in enumerate(_VARIANTS.value):
      variants[v] = two_workers(f"variant{k}", v.split(";"))
      print(f"2 workers, {v}: {variants[v]:.0f} words/s")
    apart = sum(_words_per_sec([single(f"{tmp}/a"), single(f"{tmp}/b")], [f"{tmp}/a", f"{tmp}/b"]))
    print(f"2 independent single workers:   {apart:.0f} words/s in all (no communication)")
  efficiency, ceiling = two / (2 * one), apart / (2 * one)
  print(f"weak-scaling efficiency: {efficiency:.2f} (this machine's ceiling without communication: "
        f"{ceiling:.2f})")
  for v, words in variants.items():
    print(f"  with {v}: efficiency {words / (2 * one):.2f}")
  print(json.dumps({"one_worker_words_per_sec": round(one, 1), "two_workers_words_per_sec": round(two, 1),
                    "efficiency": round(efficiency, 3), "machine_ceiling": round(ceiling, 3),
                    "of_ceiling": round(efficiency / ceiling, 3),
                    "variants": {v: {"words_per_sec": round(w, 1),
                                     "efficiency": round(w / (2 * one), 3),
                                     "of_ceiling": round(w / (2 * one) / ceiling, 3)}
                                 for v, w in variants.items()},
                    "background_busy": round(busy, 3)}))


if __name__ == "__main__":
  app.run(main)
