"""CPU time per training step of every task of a sync_backup cluster, on this machine (Linux).

  python bench/ps_cpu.py [--steps=400] [--workers=4] [--backups=1]

Runs the one-straggler scenario of bench/backup_workers.py (configs/ptb_char_cnn_lstm.py:smoke,
1 ps task, N = workers - backups, 30 ms of simulated compute, worker 0 late by
40 ms x (1 + Pareto(1.5))) through scripts/launch_local.py, reads each task's CPU seconds from
/proc while it trains, and prints, over the steady steps (the first 20 and last 10 left out),
the chief's mean step time (on the ps's clock, sync_steps.jsonl) and each task's CPU
milliseconds per step. On 2 cores the sum is
what the step time cannot go below; the shares say where to cut. The last line is one JSON
object mapping each task to its CPU ms per step, with `step_ms`.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from bench.common import background_busy, ps_cluster_command  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 400, "steps of the run")
_WORKERS = flags.DEFINE_integer("workers", 4, "worker tasks (N + b)")
_BACKUPS = flags.DEFINE_integer("backups", 1, "b")
FIRST, LAST = 20, 10     # steps left out at the start (tracing) and at the end


def _children(pid: int) -> list[int]:
  out = []
  for task in os.listdir(f"/proc/{pid}/task"):
    with open(f"/proc/{pid}/task/{task}/children") as f:
      out += [int(x) for x in f.read().split()]
  return out


def _task_name(pid: int) -> str | None:
  with open(f"/proc/{pid}/environ", "rb") as f:
    for entry in f.read().split(b"\0"):
      if entry.startswith(b"TF_CONFIG="):
        task = json.loads(entry[len(b"TF_CONFIG="):])["task"]
        return f"{task['type']}{task['index']}"
  return None


def _cpu_secs(pid: int) -> float:
  with open(f"/proc/{pid}/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def main(argv):
  del argv
  print(f"background CPU load at start: {background_busy():.0%} (figures skew if not ~0%)")
  steps, workers, backups = _STEPS.value, _WORKERS.value, _BACKUPS.value
  if steps <= FIRST + LAST or steps % 10:
    raise SystemExit(f"--steps must be a multiple of 10 above {FIRST + LAST}")
  workdir = tempfile.mkdtemp(prefix="ps_cpu_")
  n = workers - backups
  cmd = ps_cluster_command(workdir, "sync_backup", workers, backups, steps, 30.0, 40.0, 1.5,
                           ["--config.distribute.straggler.workers=0"])
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=ROOT)
  # The chief logs "step K/..." every 10 steps, as soon as they are applied: the times of its
  # lines for the steady stretch's two ends are read from the launcher's output while the CPU
  # counters of every task are sampled every 50 ms.
  seen, lines = {}, []
  wanted = {FIRST: f"step {FIRST}/{steps} ", steps - LAST: f"step {steps - LAST}/{steps} "}

  def read_output():
    for line in proc.stdout:
      lines.append(line)
      for k, text in wanted.items():
        if k not in seen and text in line:
          seen[k] = time.time()
  reader = threading.Thread(target=read_output, daemon=True)
  reader.start()
  names, samples = {}, []
  while proc.poll() is None:
    cpu = {}
    for pid in _children(proc.pid):
      try:
        if not names.get(pid):           # a task just forked may not have its TF_CONFIG yet
          names[pid] = _task_name(pid)
        cpu[pid] = _cpu_secs(pid)
      except OSError:
        pass
    samples.append((time.time(), cpu))
    time.sleep(0.05)
  reader.join()
  if proc.returncode or len(seen) < 2:
    raise SystemExit("run failed:\n" + "".join(lines)[-3000:])
  with open(os.path.join(workdir, "sync_steps.jsonl")) as f:
    secs = np.array([json.loads(line)["secs"] for line in f])
  step_ms = secs[FIRST:steps - LAST].mean() * 1e3
  at = lambda t: min(samples, key=lambda s: abs(s[0] - t))[1]   # noqa: E731
  c0, c1 = at(seen[FIRST]), at(seen[steps - LAST])
  count = steps - LAST - FIRST
  per_task = {}
  for pid, name in sorted(names.items(), key=lambda kv: str(kv[1])):
    if name:
      per_task[name] = round((c1.get(pid, 0.0) - c0.get(pid, 0.0)) * 1e3 / count, 1)
  print(f"N={n} of {workers} workers, {steps} steps; steady steps {FIRST + 1}..{steps - LAST}: "
        f"mean {step_ms:.1f} ms")
  for name, ms in per_task.items():
    print(f"  {name:8s} {ms:6.1f} ms CPU per step")
  print(f"  total    {sum(per_task.values()):6.1f} ms CPU per step, on {os.cpu_count()} cores")
  print(json.dumps({**per_task, "step_ms": round(step_ms, 1)}))


if __name__ == "__main__":
  app.run(main)
