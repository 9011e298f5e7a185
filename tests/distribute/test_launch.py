"""The supervised launcher: which deaths restart a task alone, which the whole cluster, and the
status it exits with. Fake tasks (small Python programs reading TF_CONFIG) keep the rules'
tests fast; one real sync_backup cluster is killed twice and still finishes."""
import json
import os
import subprocess
import sys
import time

from tfsys.distribute.launch import LocalCluster, RestartPolicy, cluster_spec, policy_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A task that appends its name to tasks.txt, then does what FATE says for its name and attempt:
# "ok" (exit 0), "wait" (until the chief has exited, then 0), "forever", "after:N:S" (exit S
# once N tasks have started: the whole first round), or an exit status.
TASK = r"""
import json, os, sys, time
me = json.loads(os.environ["TF_CONFIG"])["task"]
name = f"{me['type']}{me['index']}"
folder = sys.argv[1]
with open(os.path.join(folder, "tasks.txt"), "a") as f:
  f.write(name + "\n")
attempt = open(os.path.join(folder, "tasks.txt")).read().split().count(name)
fate = json.loads(sys.argv[2]).get(f"{name}:{attempt}", json.loads(sys.argv[2]).get(name, "ok"))
if fate.startswith("after:"):
  _, n, fate = fate.split(":")
  while len(open(os.path.join(folder, "tasks.txt")).read().split()) < int(n):
    time.sleep(0.05)
if fate == "wait":
  while not os.path.exists(os.path.join(folder, "chief.done")):
    time.sleep(0.05)
  sys.exit(0)
if fate in ("ok", "0"):
  if name == "chief0":
    time.sleep(0.5)
    open(os.path.join(folder, "chief.done"), "w").close()
  sys.exit(0)
if fate == "forever":
  time.sleep(3600)
sys.exit(int(fate))
"""


def _cluster(tmp_path, fates, restarts, policy, num_ps=1, num_workers=2):
  script = tmp_path / "task.py"
  script.write_text(TASK)
  launcher = LocalCluster([str(script), str(tmp_path), json.dumps(fates)],
                          cluster_spec(num_workers, num_ps), str(tmp_path / "logs"),
                          restarts=restarts, policy=policy, grace_secs=5)
  code = launcher.run()
  started = (tmp_path / "tasks.txt").read_text().split()
  events = [json.loads(l) for l in open(tmp_path / "logs" / "launcher.jsonl")]
  return code, started, events


SYNC = RestartPolicy("sync_backup", backups=1)


def test_a_sync_backup_worker_is_restarted_alone(tmp_path):
  # worker1 fails once everyone is up; the chief ends once worker1's second attempt is up.
  fates = {"ps0": "forever", "worker0": "wait", "worker1:1": "after:4:9", "worker1:2": "wait",
           "chief0": "after:5:0"}
  code, started, events = _cluster(tmp_path, fates, 3, SYNC)
  assert code == 0
  assert started.count("worker1") == 2 and started.count("chief0") == 1 and started.count("ps0") == 1
  assert [(e["event"], e["task"]) for e in events if e["event"] in ("died", "restarted")] == [
      ("died", "worker1"), ("restarted", "worker1")]


def test_a_dead_ps_restarts_the_whole_cluster_and_restarts_are_bounded(tmp_path):
  fates = {"ps0:1": "after:4:1", "ps0": "forever", "worker0": "wait", "worker1": "wait",
           "chief0:1": "wait"}
  code, started, events = _cluster(tmp_path, fates, 3, SYNC)
  assert code == 0
  assert started.count("ps0") == 2 and started.count("chief0") == 2 and started.count("worker0") == 2
  assert [e["alone"] for e in events if e["event"] == "restarted"] == [False]

  # Failing every time: 2 restarts, then the failing task's status (death by a signal as 128 + n).
  (tmp_path / "tasks.txt").unlink()
  (tmp_path / "chief.done").unlink(missing_ok=True)
  code, started, _ = _cluster(tmp_path, {"ps0": "forever", "worker0": "-9", "worker1": "wait",
                                         "chief0": "wait"}, 2, RestartPolicy("multi_worker"))
  # (sys.exit(-9) is status 247 to the parent; a real SIGKILL is -9, i.e. 137)
  assert code == 247 and started.count("worker0") == 3


def test_restarts_0_and_final_statuses_stop_at_once(tmp_path):
  code, started, _ = _cluster(tmp_path, {"ps0": "forever", "worker1": "7", "worker0": "forever",
                                         "chief0": "forever"}, 0, SYNC)
  assert code == 7 and started.count("worker1") == 1
  (tmp_path / "tasks.txt").unlink()
  (tmp_path / "chief.done").unlink(missing_ok=True)
  # A workdir held by another run (6) cannot be fixed by relaunching, whatever --restarts says.
  code, started, _ = _cluster(tmp_path, {"ps0": "forever", "chief0": "6", "worker0": "forever",
                                         "worker1": "forever"}, 3, SYNC)
  assert code == 6 and started.count("chief0") == 1


def test_the_policy_is_read_from_the_train_command():
  train = ["scripts/train.py", f"--config={ROOT}/configs/ptb_char_cnn_lstm.py:smoke"]
  assert policy_of(train + ["--config.distribute.backend=sync_backup",
                            "--config.distribute.replicas_to_aggregate=2",
                            "--config.distribute.total_num_replicas=3"]) == SYNC
  assert policy_of(train + ["--config.distribute.backend=multi_worker"]) == RestartPolicy("multi_worker")
  assert not policy_of(train + ["--config.distribute.backend=multi_worker"]).alone("worker1")
  assert not SYNC.alone("ps0") and not SYNC.alone("chief0") and SYNC.alone("worker2")
  assert policy_of(["other.py"]) == RestartPolicy()


def _records(workdir):
  path = os.path.join(workdir, "sync_steps.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(l) for l in f if l.strip()]


def _pid(workdir, task):
  with open(os.path.join(workdir, "logs", "launcher.jsonl"), encoding="utf-8") as f:
    return [e["pid"] for e in map(json.loads, f) if e["task"] == task and e["event"] == "started"][-1]


def _wait(condition, timeout, what, proc):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, f"the launcher exited ({proc.returncode}) waiting for {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.2)


def test_a_real_cluster_survives_a_worker_kill_and_a_ps_kill(tmp_path):
  """The README's sync_backup command (N = 2 of 3) under the launcher: worker1 SIGKILLed is
  restarted alone; ps0 SIGKILLed restarts the cluster, which resumes from the checkpoint and
  finishes: results.json, and exactly one step record per step."""
  workdir = str(tmp_path / "run")
  steps = 250   # with 100 ms of (simulated) compute per step: time for worker1 to rejoin
  launcher = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "--num_ps=1",
       "--num_workers=3", "--", os.path.join(ROOT, "scripts", "train.py"),
       f"--config={ROOT}/configs/ptb_char_cnn_lstm.py:smoke", f"--workdir={workdir}",
       "--config.distribute.backend=sync_backup", "--config.distribute.replicas_to_aggregate=2",
       "--config.distribute.total_num_replicas=3", f"--config.train.num_steps={steps}",
       "--config.train.checkpoint_every=10", "--config.eval.max_tokens=100",
       "--config.distribute.straggler.compute_ms=100"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  try:
    _wait(lambda: len(_records(workdir)) >= 15, 180, "15 steps", launcher)
    os.killpg(_pid(workdir, "worker1"), 9)
    killed_at = len(_records(workdir))
    # With b = 1 training goes on without worker1 (the first records after the kill may still
    # hold its last gradient) ...
    _wait(lambda: len(_records(workdir)) >= killed_at + 8, 120, "steps without worker1", launcher)
    assert all(len(r["used"]) == 2 for r in _records(workdir)[killed_at:])
    assert all(1 not in r["used"] for r in _records(workdir)[killed_at + 3:killed_at + 8])
    # ... and the restarted worker1 rejoins and is used again, with no step lost meanwhile.
    _wait(lambda: any(1 in r["used"] for r in _records(workdir)[killed_at + 2:]), 180,
          "worker1 to be used again", launcher)
    assert "resuming" not in open(os.path.join(workdir, "logs", "chief0.log")).read()
    _wait(lambda: len(_records(workdir)) >= 40, 180, "40 steps", launcher)
    os.killpg(_pid(workdir, "ps0"), 9)
    out, _ = launcher.communicate(timeout=300)
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert launcher.returncode == 0, out[-4000:]
  assert "worker1 killed by SIGKILL; sync_backup goes on without it (b=1): restarting worker1 alone" in out
  assert "ps0 killed by SIGKILL; restarting the whole cluster, which resumes from the last checkpoint" in out
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == steps
  assert [r["step"] for r in _records(workdir)] == list(range(1, steps + 1))
