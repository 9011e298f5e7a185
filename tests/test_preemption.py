"""SIGTERM (a preemption notice) to a task of each kind of run: the step under way is saved,
every task exits with status 75, and the relaunch resumes at exactly that step."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import tensorflow as tf

from tests import warm
from tfsys.errors import EXIT_PREEMPTED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [os.path.join(ROOT, "scripts", "train.py"),
         f"--config={ROOT}/configs/ptb_char_cnn_lstm.py:smoke", "--config.eval.max_tokens=100",
         "--config.train.checkpoint_every=100000", "--config.eval.every_steps=100000"]
LAUNCH = [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py")]


def _latest_step(workdir):
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  return int(path.rsplit("-", 1)[1]) if path else None


def _wait_for_line(proc, pattern, timeout=180, at_least=None):
  """Reads proc's output until a line contains `pattern` (with at_least: a progress line of
  that step or later); returns everything read."""
  seen, deadline = [], time.monotonic() + timeout
  for line in proc.stdout:
    seen.append(line)
    if at_least is not None:
      found = re.search(r"step (\d+)/\d+ \|", line)
      if found and int(found.group(1)) >= at_least:
        return "".join(seen)
    elif pattern in line:
      return "".join(seen)
    assert time.monotonic() < deadline, f"timed out waiting for {pattern!r}"
  raise AssertionError(f"exited ({proc.wait()}) before {pattern!r}:\n" + "".join(seen)[-3000:])


def _preempted_step(text):
  return int(text.rsplit("preempted (SIGTERM) at step ", 1)[1].split(":")[0])


def test_single(tmp_path):
  workdir = str(tmp_path / "run")
  args = [*TRAIN, f"--workdir={workdir}", "--config.train.log_every=1"]
  with warm.started() as second:   # (the resumed run's start-up overlaps the first run)
    proc = subprocess.Popen([sys.executable, *args, "--config.train.num_steps=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    _wait_for_line(proc, "step 5/")
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == EXIT_PREEMPTED, out[-3000:]
    step = _preempted_step(out)
    assert step >= 5 and _latest_step(workdir) == step
    resumed = warm.run(second, args + [f"--config.train.num_steps={step + 2}"], timeout=180)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming at step {step} from" in resumed.stderr


def test_multi_worker_one_worker_preempted(tmp_path):
  """SIGTERM to worker1 alone: both workers save the same step together and exit 75; the
  supervised launcher relaunches the cluster, which resumes at exactly that step."""
  workdir = str(tmp_path / "run")
  # Steps of ~50 ms here: 195 after the 5th leave seconds for the SIGTERM to arrive before the
  # end, on faster machines too.
  num_steps = 200
  launcher = subprocess.Popen(
      LAUNCH + ["--num_workers=2", "--restarts=1", "--", *TRAIN, f"--workdir={workdir}",
                "--config.distribute.backend=multi_worker", "--config.train.log_every=1",
                f"--config.train.num_steps={num_steps}"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  try:
    seen = _wait_for_line(launcher, "[worker0] ", 60)
    seen += _wait_for_line(launcher, f"step 5/{num_steps}")
    with open(os.path.join(workdir, "logs", "launcher.jsonl"), encoding="utf-8") as f:
      pid = [e["pid"] for e in map(json.loads, f) if e["task"] == "worker1"][-1]
    os.kill(pid, signal.SIGTERM)
    out = seen + launcher.stdout.read()
    assert launcher.wait(timeout=300) == 0, out[-4000:]
  finally:
    if launcher.poll() is None:
      launcher.kill()
  logs = {t: open(os.path.join(workdir, "logs", f"{t}.log")).read() for t in ("worker0", "worker1")}
  steps = {t: _preempted_step(log) for t, log in logs.items()}
  assert steps["worker0"] == steps["worker1"], steps      # one step, saved together
  assert "exited with status 75; restarting the whole cluster" in out   # either worker first
  assert f"resuming at step {steps['worker0']} from" in logs["worker0"]
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == num_steps


def _preempt_ps_cluster(tmp_path, backend, sigterm_every_task):
  """A ps-backend cluster (1 ps, 2 workers) under the launcher (--restarts=0), preempted at
  step 10: SIGTERM to every task at once (as Kubernetes does to every pod of a job; the ps
  serves on while the chief saves) or to the launcher. Returns (workdir, step saved, command)."""
  workdir = str(tmp_path / "run")
  command = LAUNCH + ["--num_ps=1", "--num_workers=2", "--restarts=0", "--", *TRAIN,
                      f"--workdir={workdir}", f"--config.distribute.backend={backend}",
                      "--config.distribute.replicas_to_aggregate=1",
                      "--config.distribute.total_num_replicas=2", "--config.train.log_every=5"]
  launcher = subprocess.Popen(command + ["--config.train.num_steps=100000"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  try:
    # (the async chief's progress lines jump: steps land from every worker between its polls)
    seen = _wait_for_line(launcher, None, at_least=10)
    if sigterm_every_task:
      with open(os.path.join(workdir, "logs", "launcher.jsonl"), encoding="utf-8") as f:
        for pid in {e["task"]: e["pid"] for e in map(json.loads, f) if e["event"] == "started"}.values():
          os.killpg(pid, signal.SIGTERM)
    else:
      launcher.send_signal(signal.SIGTERM)
    out = seen + launcher.stdout.read()
    assert launcher.wait(timeout=120) == EXIT_PREEMPTED, out[-4000:]
  finally:
    if launcher.poll() is None:
      launcher.kill()
  step = _preempted_step(out)
  assert _latest_step(workdir) == step and step >= 10
  return workdir, step, command


def test_sync_backup_every_task_preempted(tmp_path):
  workdir, step, command = _preempt_ps_cluster(tmp_path, "sync_backup", sigterm_every_task=True)
  with open(os.path.join(workdir, "sync_steps.jsonl"), encoding="utf-8") as f:
    assert [json.loads(l)["step"] for l in f] == list(range(1, step + 1))
  resumed = subprocess.run(command + [f"--config.train.num_steps={step + 3}"], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
  assert resumed.returncode == 0, resumed.stdout[-4000:]
  assert f"resuming at step {step} from" in resumed.stdout


def test_async_ps_launcher_preempted(tmp_path):
  """The async chief stops its workers before it saves: the checkpoint's step is the global
  step of the parameters saved, and the relaunch resumes there."""
  workdir, step, command = _preempt_ps_cluster(tmp_path, "async_ps", sigterm_every_task=False)
  reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints", f"ckpt-{step}"))
  assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == step
  resumed = subprocess.run(command + [f"--config.train.num_steps={step + 3}"], capture_output=True,
                           text=True, cwd=ROOT, timeout=300)
  assert resumed.returncode == 0, resumed.stdout[-4000:]
  assert f"resuming at step {step} from" in resumed.stdout
