"""Synchronous SGD with backup workers against stragglers (Chen et al. 2016), on this machine.

  python bench/backup_workers.py [--steps=150] [--compute_ms=30] [--scale_ms=40] [--shape=1.5]

Trains the language model (configs/ptb_char_cnn_lstm.py:smoke, 1 ps task, a chief and N = 3
gradients per step) through scripts/launch_local.py with compute_ms of simulated compute per
step (every worker's gradient takes that long: the smoke model's own computation, and a sleep
for the rest), in two straggler scenarios of DESIGN.md §3:
  one   worker 0 is also late every step by scale_ms × (1 + Pareto(shape)) (heavy-tailed);
  all   every worker is late so, with probability 0.1 per step.
For each it measures the chief's step times (mean / p50 / p90 / p99, from sync_steps.jsonl,
the first 10 steps not counted) with b = 0 and b = 1 backup worker, and once the ideal: N
workers, b = 0, no stragglers at all (what removing the stragglers would give). For b = 1 it
also reports the mean over steps of the N-th fastest of the N + b workers' own compute times
(for information: the least a step could take). Then loss against wall time for sync b = 0,
sync b = 1 and async (N + 1 workers) in the one-straggler scenario.

The last line is one JSON object for the one-straggler scenario: b0_mean_step_ms,
b1_mean_step_ms, no_straggler_mean_step_ms, speedup = b0 / b1, b1_over_ideal = b1 / ideal.

--steps_out=PATH also writes every step's time of each run (ideal, one_b0, one_b1, all_b0,
all_b1; in ms, the warm-up steps included) to PATH as JSON, for scripts/plot_results.py
--backup_steps=PATH.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from bench.common import background_busy, ps_cluster_command  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 150, "steps per run")
_N = flags.DEFINE_integer("n", 3, "replicas_to_aggregate")
_COMPUTE = flags.DEFINE_float("compute_ms", 30.0, "simulated compute per step, every worker")
_SCALE = flags.DEFINE_float("scale_ms", 40.0, "Pareto scale of a straggler's extra delay")
_SHAPE = flags.DEFINE_float("shape", 1.5, "Pareto shape (heavy tail)")
_STEPS_OUT = flags.DEFINE_string("steps_out", None, "if set: write every step's time of each "
                                 "run to this JSON file (for scripts/plot_results.py)")
WARMUP = 10



def _run(workdir, backend, workers, backups, straggler):
  cmd = ps_cluster_command(workdir, backend, workers, backups, _STEPS.value, _COMPUTE.value,
                           _SCALE.value, _SHAPE.value, straggler)
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  if proc.returncode:
    raise SystemExit(f"run failed:\n{proc.stdout[-3000:]}")


def _step_ms(workdir):
  """Every step's time in ms (from sync_steps.jsonl, the warm-up steps included), step 1 first."""
  with open(os.path.join(workdir, "sync_steps.jsonl")) as f:
    records = [json.loads(line) for line in f]
  return [round(r["secs"] * 1e3, 1) for r in sorted(records, key=lambda r: r["step"])]


def _write_steps(path, step_ms, stats, busy):
  out = {"what": "the chief's time of every step (ms, sync_steps.jsonl 'secs'; step_ms[run][k] is "
                 f"step k + 1) of each run of bench/backup_workers.py; the summary statistics "
                 f"leave out the first {WARMUP} steps",
         "command": " ".join(["python", "bench/backup_workers.py", *sys.argv[1:]]),
         "n": _N.value, "steps": _STEPS.value, "compute_ms": _COMPUTE.value,
         "scale_ms": _SCALE.value, "shape": _SHAPE.value, "warmup": WARMUP,
         "background_busy": round(busy, 3),
         "scenarios": {"one": f"worker 0 late every step by {_SCALE.value:g} ms x (1 + "
                              f"Pareto({_SHAPE.value:g}))",
                       "all": f"every worker late so ({_SCALE.value:g} ms x (1 + "
                              f"Pareto({_SHAPE.value:g}))) with probability 0.1 per step",
                       "ideal": "N workers, b = 0, no stragglers"},
         "step_ms": step_ms,
         "mean_step_ms": {k: round(float(s["mean"]), 1) for k, s in stats.items()}}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
    f.write("\n")


def _step_stats(workdir, n):
  with open(os.path.join(workdir, "sync_steps.jsonl")) as f:
    records = [json.loads(line) for line in f]
  ms = np.array([r["secs"] for r in records[WARMUP:]]) * 1e3
  stats = {"mean": ms.mean(), "p50": np.percentile(ms, 50), "p90": np.percentile(ms, 90),
           "p99": np.percentile(ms, 99)}
  # Every worker's compute time for each step, used or dropped: the N-th fastest bounds the step.
  by_step = {}
  for r in records:
    for w, secs in r["compute_secs"].items():
      by_step.setdefault(r["step"] - 1, {})[w] = secs
    for w, t, secs in r["dropped"]:
      by_step.setdefault(t, {})[str(w)] = secs
  nth = [sorted(v.values())[n - 1] * 1e3 for t, v in by_step.items() if t >= WARMUP and len(v) > n]
  stats["nth_fastest"] = float(np.mean(nth)) if nth else float("nan")
  stats["dropped"] = sum(len(r["dropped"]) for r in records)
  return stats


def _loss_curve(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  import tensorflow as tf
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "train"),
                                           size_guidance={"tensors": 0})
  acc.Reload()
  events = acc.Tensors("train/loss")
  t0 = events[0].wall_time
  return [(e.wall_time - t0, e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events]


def _line(name, s):
  return (f"  {name:<22} mean {s['mean']:7.1f} ms  p50 {s['p50']:7.1f}  p90 {s['p90']:7.1f}  "
          f"p99 {s['p99']:7.1f}  dropped {s['dropped']}")


def main(argv):
  del argv
  busy = background_busy()
  n = _N.value
  print(f"background CPU load before the runs: {busy:.0%} (figures are skewed if not ~0%)")
  print(f"N={n}, simulated compute {_COMPUTE.value:g} ms, straggler delay "
        f"{_SCALE.value:g} ms x (1 + Pareto({_SHAPE.value:g})), {_STEPS.value} steps per run")
  scenarios = {"one": ["--config.distribute.straggler.workers=0"],
               "all": ["--config.distribute.straggler.workers=all",
                       "--config.distribute.straggler.probability=0.1"]}
  stats, curves, step_ms = {}, {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    ideal_dir = os.path.join(tmp, "ideal")
    _run(ideal_dir, "sync_backup", n, 0, [])
    stats["ideal"] = _step_stats(ideal_dir, n)
    step_ms["ideal"] = _step_ms(ideal_dir)
    for scenario, straggler in scenarios.items():
      for b in (0, 1):
        d = os.path.join(tmp, f"{scenario}_b{b}")
        _run(d, "sync_backup", n + b, b, straggler)
        stats[f"{scenario}_b{b}"] = _step_stats(d, n)
        step_ms[f"{scenario}_b{b}"] = _step_ms(d)
        if scenario == "one":
          curves[f"sync b={b}"] = _loss_curve(d)
    d = os.path.join(tmp, "async")
    _run(d, "async_ps", n + 1, 0, scenarios["one"])
    curves[f"async ({n + 1} workers)"] = _loss_curve(d)

  print("\nstep times (chief):")
  print(_line("no stragglers, b=0", stats["ideal"]))
  for scenario in scenarios:
    print(f" scenario '{scenario}':")
    for b in (0, 1):
      print(_line(f"b={b}", stats[f"{scenario}_b{b}"]))
    print(f"  N-th fastest of N+1 workers' compute: {stats[f'{scenario}_b1']['nth_fastest']:.1f} ms")
  print("\nloss against wall time, scenario 'one' (seconds since the first logged step: loss):")
  for name, curve in curves.items():
    points = ", ".join(f"{t:.1f}s: {loss:.3f}" for t, _, loss in curve[::3])
    print(f"  {name:<18} {points}")
  if _STEPS_OUT.value:
    _write_steps(_STEPS_OUT.value, step_ms, stats, busy)
    print(f"\nevery step's time written to {_STEPS_OUT.value}")
  b0, b1, ideal = stats["one_b0"]["mean"], stats["one_b1"]["mean"], stats["ideal"]["mean"]
  print(json.dumps({"b0_mean_step_ms": round(b0, 1), "b1_mean_step_ms": round(b1, 1),
                    "no_straggler_mean_step_ms": round(ideal, 1),
                    "speedup": round(b0 / b1, 2), "b1_over_ideal": round(b1 / ideal, 3),
                    "b1_nth_fastest_ms": round(stats["one_b1"]["nth_fastest"], 1),
                    "all_b0_mean_step_ms": round(stats["all_b0"]["mean"], 1),
                    "all_b1_mean_step_ms": round(stats["all_b1"]["mean"], 1)}))


if __name__ == "__main__":
  app.run(main)
