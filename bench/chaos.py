"""Chaos: kill -9 random tasks of a supervised cluster at random moments; does the run recover?

  python bench/chaos.py [--backends=sync_backup,multi_worker] [--kills=10] [--seed=0]

For each backend, first an uninterrupted run, then the same run under scripts/launch_local.py
(--restarts large) while this script SIGKILLs `--kills` tasks one at a time, each a random
moment (2-6 s of training) after the run has recovered from the previous kill:

  sync_backup   N = 2 of 3 workers, 2 ps tasks, every worker's step at least 30 ms of
                (simulated) compute; victims: workers, the chief, the ps tasks
  multi_worker  2 workers; victims: either

Per kill it records the victim, detection (kill -> the launcher sees the death), recovery (kill
-> training passes the step it had reached) and steps recomputed (the step reached minus the
step the run resumed at; 0 when nothing rolled back). At the end: the final step, whether
results.json exists, and the final validation loss next to the uninterrupted run's.

Targets (issue 14): every kill recovered with no manual action; a worker kill under b >= 1
recomputes 0 steps; any other kill at most train.checkpoint_every steps; detection within 60 s;
the final loss within noise of the uninterrupted run (sync_backup is not deterministic: which
N gradients make a step depends on timing; multi_worker resumes exactly).

The last line is one JSON object.
"""
import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ROOT, background_busy  # noqa: E402

CHECKPOINT_EVERY = 50
STEP_LINE = re.compile(r"\bstep (\d+)/(\d+) \|")
RESUME_LINE = re.compile(r"resuming at step (\d+)")

SETUPS = {
    "sync_backup": dict(
        launch=["--num_ps=2", "--num_workers=3"], chief="chief0", steps=1500,
        victims=["worker0", "worker1", "worker2", "chief0", "ps0", "ps1"],
        train=["--config.distribute.backend=sync_backup",
               "--config.distribute.replicas_to_aggregate=2",
               "--config.distribute.total_num_replicas=3", "--config.distribute.shard_min_rows=100",
               "--config.distribute.straggler.compute_ms=30",
               "--config.distribute.log_workers_every=1000000",
               "--config.distribute.ps_timeout_secs=10", "--config.distribute.chief_timeout_secs=10"]),
    "multi_worker": dict(
        launch=["--num_workers=2"], chief="worker0", steps=2500,
        victims=["worker0", "worker1"],
        train=["--config.distribute.backend=multi_worker",
               "--config.distribute.collective_timeout_secs=30"]),
}


def train_command(workdir: str, setup: dict, restarts: int) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), *setup["launch"],
          f"--restarts={restarts}", "--", os.path.join(ROOT, "scripts", "train.py"),
          f"--config={os.path.join(ROOT, 'configs', 'ptb_char_cnn_lstm.py')}:smoke",
          f"--workdir={workdir}", *setup["train"], f"--config.train.num_steps={setup['steps']}",
          "--config.train.log_every=1", f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.train.histogram_every=1000000", "--config.eval.every_steps=1000000",
          "--config.eval.max_tokens=2000", "--config.monitor.noise_scale_every=0",
          "--config.distribute.intra_op_threads=1"]


class Progress:
  """The chief's progress read from its log (every relaunch appends to the same file): every
  step line and every "resuming at step R" line, with the time this script read it."""

  def __init__(self, workdir: str, chief: str):
    self.path = os.path.join(workdir, "logs", f"{chief}.log")
    self.offset, self.step = 0, 0
    self.steps, self.resumes = [], []     # (time read, step)

  def poll(self) -> int:
    if not os.path.exists(self.path):
      return self.step
    with open(self.path, "rb") as f:
      f.seek(self.offset)
      data = f.read()
    cut = data.rfind(b"\n") + 1          # whole lines only
    self.offset += cut
    now = time.time()
    for line in data[:cut].decode("utf-8", "replace").splitlines():
      m = RESUME_LINE.search(line)
      if m:
        self.resumes.append((now, int(m.group(1))))
        self.step = int(m.group(1))
      m = STEP_LINE.search(line)
      if m:
        self.step = int(m.group(1))
        self.steps.append((now, self.step))
    return self.step


def pids(workdir: str) -> dict:
  path = os.path.join(workdir, "logs", "launcher.jsonl")
  out = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for e in map(json.loads, f):
        if e["event"] == "started":
          out[e["task"]] = e["pid"]
  return out


def launcher_events(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "logs", "launcher.jsonl"), encoding="utf-8") as f:
    return [json.loads(l) for l in f]


def measure(workdir, progress, launcher, victim, killed_at, step_at_kill, timeout=600) -> dict:
  """Waits until the run has recovered from the kill of `victim` at killed_at: the launcher saw
  the death (detection), restarted the task or the cluster, and the chief logged a step past
  the furthest step reached before (recovery). Steps recomputed: that furthest step minus the
  step the relaunched chief resumed at (0 without a whole-cluster restart)."""
  deadline = killed_at + timeout
  died = restarted = None
  while launcher.poll() is None and time.time() < deadline:
    progress.poll()
    events = [e for e in launcher_events(workdir) if e["time"] >= killed_at - 0.2]
    died = died or next((e for e in events if e["event"] == "died" and e["task"] == victim), None)
    if died and not restarted:
      restarted = next((e for e in events if e["event"] == "restarted" and e["time"] >= died["time"]), None)
    if restarted:
      if restarted["alone"]:
        after = [s for t, s in progress.steps if t >= restarted["time"]]
        if after and after[-1] > step_at_kill:
          break
      else:
        resumed = [(t, s) for t, s in progress.resumes if t >= restarted["time"]]
        if resumed:
          reached = max([s for t, s in progress.steps if t < resumed[0][0]] + [step_at_kill])
          after = [s for t, s in progress.steps if t > resumed[0][0]]
          if after and after[-1] > reached:
            break
    time.sleep(0.05)
  now = time.time()
  out = {"victim": victim, "step_at_kill": step_at_kill,
         "restart": None if not restarted else ("alone" if restarted["alone"] else "cluster"),
         "detect_secs": round(died["time"] - killed_at, 2) if died else None}
  resumed = [(t, s) for t, s in progress.resumes if restarted and t >= restarted["time"]]
  if restarted and not restarted["alone"] and resumed:
    reached = max([s for t, s in progress.steps if t < resumed[0][0]] + [step_at_kill])
    out.update(reached=reached, resumed_at_step=resumed[0][1],
               steps_recomputed=max(reached - resumed[0][1], 0))
  elif restarted and restarted["alone"]:
    out.update(steps_recomputed=0)       # the run went on: nothing rolled back
  else:
    out.update(steps_recomputed=None)    # no resume seen: not recovered
  out["recovered"] = bool(restarted) and launcher.poll() is None and now < deadline
  out["recover_secs"] = round(now - killed_at, 2) if out["recovered"] else None
  return out


def final_loss(workdir: str) -> float | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return math.log(json.load(f)["valid_perplexity"])


def uninterrupted(setup: dict, root: str) -> tuple[float | None, float]:
  workdir = os.path.join(root, "uninterrupted")
  t0 = time.time()
  subprocess.run(train_command(workdir, setup, restarts=0), stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, check=True, cwd=ROOT, timeout=3600)
  return final_loss(workdir), time.time() - t0


def chaos(name: str, setup: dict, root: str, kills: int, rng: random.Random) -> dict:
  workdir = os.path.join(root, "chaos")
  log = open(os.path.join(root, "chaos_launcher.log"), "w", encoding="utf-8")
  launcher = subprocess.Popen(train_command(workdir, setup, restarts=10 * kills), stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
  progress = Progress(workdir, setup["chief"])
  records = []
  try:
    for k in range(kills):
      # Wait for training to run (past the previous kill's step), then a random 2-6 s more.
      reached_before = records[-1]["step_at_kill"] if records else 0
      while progress.poll() <= reached_before or progress.step < 3:
        if launcher.poll() is not None:
          break
        time.sleep(0.1)
      if launcher.poll() is not None:
        print(f"  the run ended after {k} kills", flush=True)
        break
      deadline = time.time() + rng.uniform(2.0, 6.0)
      while time.time() < deadline and launcher.poll() is None:
        progress.poll()
        time.sleep(0.1)
      if launcher.poll() is not None or progress.step >= setup["steps"] - 5:
        print(f"  the run is ending: stopping after {k} kills", flush=True)
        break
      victim = rng.choice(setup["victims"])
      pid = pids(workdir)[victim]
      step_at_kill = progress.poll()
      killed_at = time.time()
      try:
        os.killpg(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      record = measure(workdir, progress, launcher, victim, killed_at, step_at_kill)
      record = {"kill": k + 1, **record}
      records.append(record)
      print(f"  {name} kill {k + 1}: {json.dumps(record)}", flush=True)
    code = launcher.wait(timeout=3600)
  finally:
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
      launcher.wait()
    log.close()
  return {"records": records, "launcher_status": code, "final_step": progress.poll(),
          "results_json": os.path.exists(os.path.join(workdir, "results.json")),
          "final_loss": final_loss(workdir)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backends", default="sync_backup,multi_worker")
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--keep", action="store_true", help="keep the workdirs (printed)")
  args = parser.parse_args()
  rng = random.Random(args.seed)
  print(f"background CPU busy before: {background_busy():.0%}", flush=True)
  out = {}
  for name in args.backends.split(","):
    setup = SETUPS[name]
    root = tempfile.mkdtemp(prefix=f"chaos_{name}_")
    base_loss, base_secs = uninterrupted(setup, root)
    print(f"{name}: uninterrupted run: final validation loss {base_loss:.4f} in {base_secs:.0f} s",
          flush=True)
    result = chaos(name, setup, root, args.kills, rng)
    result["uninterrupted_loss"] = base_loss
    result["final_loss_delta"] = (None if result["final_loss"] is None or base_loss is None
                                  else result["final_loss"] - base_loss)
    out[name] = result
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'records'})}", flush=True)
    if args.keep:
      print(f"  kept {root}")
    else:
      shutil.rmtree(root, ignore_errors=True)

  records = [dict(r, backend=n) for n, res in out.items() for r in res["records"]]
  worker_kills = [r for r in records if r["backend"] == "sync_backup" and r["victim"].startswith("worker")]
  summary = {
      "kills": len(records),
      "recovered": sum(r["recovered"] for r in records),
      "finished": {n: res["results_json"] and res["launcher_status"] == 0 for n, res in out.items()},
      "max_detect_secs": max((r["detect_secs"] or math.inf for r in records), default=None),
      "max_recover_secs": max((r["recover_secs"] or math.inf for r in records), default=None),
      "max_steps_recomputed": max((math.inf if r["steps_recomputed"] is None
                                   else r["steps_recomputed"] for r in records), default=None),
      "checkpoint_every": CHECKPOINT_EVERY,
      "worker_kills_steps_recomputed": [r["steps_recomputed"] for r in worker_kills],
      "final_loss_delta": {n: res["final_loss_delta"] for n, res in out.items()},
      "final_loss": {n: res["final_loss"] for n, res in out.items()},
      "uninterrupted_loss": {n: res["uninterrupted_loss"] for n, res in out.items()},
      "victims": [f"{r['backend']}:{r['victim']}" for r in records],
  }
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
