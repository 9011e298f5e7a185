"""Exact resume (issue 14, item 6): a run killed with SIGKILL and resumed ends with the weights of
a run that was never stopped.

What makes it so: every training-time random draw (dropout masks, the sampled softmax's
negatives, the VAE's z and word dropout) is a function of (seed, step, replica)
(models/layers/stateless.py); everything else a resume needs is in the checkpoint (weights,
optimizer slots, step, learning-rate decay, the carried LSTM state) or is a function of the
step (the data stream). With TensorFlow's stateful random ops a restarted process would begin
their streams again and the first run's first masks would come back at every resume.

The kills come at moments read from the run's own output (its k-th step or checkpoint line),
never after a fixed sleep.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from tests import warm
from tfsys.errors import TaskLostError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
STEP = re.compile(r"\bstep (\d+)/\d+ \|")
SAVED = re.compile(r"\bsaved \S+/ckpt-(\d+)\s*$")
RESUMED = re.compile(r"resuming at step (\d+) from")
TIMEOUT_SECS = 240


class _Run:
  """One training command, its output read line by line as it comes (the clock the kills go
  by) and copied to a log; a watchdog kills it if it outlives TIMEOUT_SECS. held: a
  tests/warm.py process, given its command by release() once the run before it is over."""

  def __init__(self, command, log_path, held=False):
    self.log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
    assert command[0] == PY
    self.command = command
    output = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    self.proc = (warm.start(**output) if held else
                 subprocess.Popen(command, text=True, cwd=ROOT, **output))
    self.watchdog = threading.Timer(TIMEOUT_SECS, self.kill)
    self.watchdog.start()

  def release(self):
    warm.give(self.proc, self.command[1:])

  def lines(self):
    for line in self.proc.stdout:
      self.log.write(line)
      yield line

  def kill(self):
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

  def finish(self) -> int:
    for _ in self.lines():   # the rest of the output: the run cannot block on a full pipe
      pass
    code = self.proc.wait()
    self.watchdog.cancel()
    self.log.close()
    return code


def _tail(path, n=3000):
  with open(path, encoding="utf-8") as f:
    return f.read()[-n:]


def _checkpoint(workdir):
  """Every variable of the workdir's newest checkpoint: weights, optimizer slots, step, ..."""
  directory = os.path.join(workdir, "checkpoints")
  reader = tf.train.load_checkpoint(directory)
  return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(directory)
          if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def _assert_same_weights(unbroken, resumed, steps):
  a, b = _checkpoint(unbroken), _checkpoint(resumed)
  assert sorted(a) == sorted(b)
  step = "step/.ATTRIBUTES/VARIABLE_VALUE"
  assert int(a[step]) == steps == int(b[step])
  differ = [name for name in a if not np.array_equal(a[name], b[name])]
  for name in differ:   # on the same machine none differ; allow rounding elsewhere
    np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-7, err_msg=name)
  return differ


# ================================================================ single, killed five times
TRAIN = [PY, "scripts/train.py", "--config=configs/ptb_char_cnn_lstm.py:smoke",
         "--config.train.num_steps=40", "--config.train.checkpoint_every=4",
         "--config.train.log_every=1", "--config.eval.every_steps=16",
         "--config.eval.max_tokens=100",
         # Every random site of the LSTM LM: dropout on the embeddings, between the layers and
         # after the top one (the smoke config has 0.5), and the sampled softmax's negatives.
         "--config.model.embedding_dropout=0.2", "--config.model.num_samples=64"]
# Kill at the first step line at or past these steps, or right after these checkpoints: each
# resumes from a different step, some with steps to redo since the last checkpoint.
KILLS = [(STEP, 6), (SAVED, 12), (STEP, 19), (STEP, 27), (SAVED, 32)]


def test_single_killed_five_times_ends_with_the_weights_of_an_unbroken_run(tmp_path):
  start = time.monotonic()
  unbroken, killed = str(tmp_path / "unbroken"), str(tmp_path / "killed")
  # The unbroken run goes alongside the killed ones (their start-ups dominate the time).
  with open(tmp_path / "unbroken.log", "w", encoding="utf-8") as log:
    reference = subprocess.Popen([*TRAIN, f"--workdir={unbroken}"], stdout=log,
                                 stderr=subprocess.STDOUT, cwd=ROOT)
  log_path = str(tmp_path / "killed.log")
  resumed_at, run, held = [], None, None
  try:
    run = _Run([*TRAIN, f"--workdir={killed}"], log_path)
    for pattern, at in KILLS:
      # The next process starts up while this one trains; it is released once this one is dead.
      held = _Run([*TRAIN, f"--workdir={killed}"], log_path, held=True)
      for line in run.lines():
        if m := RESUMED.search(line):
          resumed_at.append(int(m.group(1)))
        if (m := pattern.search(line)) and int(m.group(1)) >= at:
          run.kill()
          break
      assert run.finish() == -signal.SIGKILL, _tail(log_path)
      held.release()
      run, held = held, None
    resumed_at += [int(m.group(1)) for line in run.lines() if (m := RESUMED.search(line))]
    assert run.finish() == 0, _tail(log_path)
    assert reference.wait(timeout=TIMEOUT_SECS) == 0, _tail(tmp_path / "unbroken.log")
  finally:   # nothing left running if an assertion failed half-way
    for r in (run, held):
      if r is not None:
        r.kill()
        r.watchdog.cancel()
    reference.kill()
    reference.wait()
  # Five resumes, each from a later checkpoint than the one before, all before the end.
  assert len(resumed_at) == 5 and resumed_at == sorted(set(resumed_at)), resumed_at
  assert 0 < resumed_at[0] and resumed_at[-1] < 40, resumed_at
  differ = _assert_same_weights(unbroken, killed, 40)
  print(f"resumed at {resumed_at}; variables not bitwise equal: {differ or 'none'}; "
        f"{time.monotonic() - start:.0f} s")


# ================================================================ sync_backup, b = 0, relaunched
# The sentence VAE: it carries no state between batches. (The LSTM LM's carried state is not
# kept across a relaunch by the parameter-server workers: they restart it from zeros.) On the
# small text corpus of conftest.py: twelve TensorFlow processes start in this test, and each
# would spend seconds reading PTB and evaluating on its test set.
CLUSTER = [PY, "scripts/launch_local.py", "--num_ps=1", "--num_workers=2", "--",
           "scripts/train.py", "--config=configs/ptb_vae.py:smoke",
           "--config.distribute.backend=sync_backup", "--config.distribute.replicas_to_aggregate=2",
           "--config.distribute.total_num_replicas=2", "--config.train.num_steps=20",
           "--config.train.checkpoint_every=5", "--config.train.log_every=1",
           "--config.eval.every_steps=1000", "--config.eval.max_sentences=20",
           "--config.eval.iw_samples=1",
           # z, word dropout and dropout all on (the smoke config has 0.25 and 0.5).
           "--config.model.word_dropout=0.25", "--config.model.dropout=0.5"]


def _events(workdir):
  """The launcher's events in the workdir (launcher.jsonl): starts, deaths, restarts."""
  path = os.path.join(workdir, "logs", "launcher.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _task_pids(workdir):
  return [e["pid"] for e in _events(workdir) if e["event"] == "started"]


def _ps_crash_restarts(events) -> int:
  """How many times the launcher restarted the whole cluster after a ps task's SIGSEGV.

  TensorFlow's eager service on a ps task sometimes crashes (a use-after-free while it runs a
  client's op; README, sync_backup); the launcher then restarts the cluster, which resumes once
  more from the last checkpoint. The death it records first is the ps's SIGSEGV, or, where
  the ps takes a while to die (writing a core dump), a client's exit with the lost-peer
  status, having found the ps gone. Any other death fails this test."""
  deaths = [e for e in events if e["event"] == "died"]
  restarts = [e for e in events if e["event"] == "restarted"]
  assert len(deaths) == len(restarts), events   # every death recovered: the run finished
  for died, restarted in zip(deaths, restarts):
    assert ((died["task"].startswith("ps") and died["status"] == -signal.SIGSEGV)
            or died["status"] == TaskLostError.exit_status), events
    assert restarted["alone"] is False, events
  return len(restarts)


def _kill_tasks(workdir):
  """SIGKILLs every task the workdir's launcher started (each is its own process group)."""
  for pid in _task_pids(workdir):
    try:
      os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def _wait_gone(pids, timeout=30.0):
  """Until every pid has exited (absent, or a zombie nobody reaped yet): the polled condition."""
  def alive(pid):
    try:
      with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
      return False
  deadline = time.monotonic() + timeout
  while any(alive(p) for p in pids):
    assert time.monotonic() < deadline, f"tasks {pids} still alive after SIGKILL"
    time.sleep(0.05)


def test_sync_backup_relaunched_ends_with_the_weights_of_an_unbroken_run(text_corpus_dir):
  start = time.monotonic()
  tmp_path = text_corpus_dir
  cluster = [*CLUSTER, "--config.data.corpus=text",
             *(f"--config.data.{split}_path={tmp_path / split}.txt"
               for split in ("train", "valid", "test"))]
  unbroken, killed = str(tmp_path / "unbroken"), str(tmp_path / "killed")
  log_path = str(tmp_path / "killed.log")
  run = _Run([*cluster, f"--workdir={killed}"], log_path)
  reference = None
  try:
    for line in run.lines():
      # The unbroken cluster starts once this one's servers are up, so that the two
      # launchers never pick the same free port.
      if reference is None and "[chief] state on" in line:
        with open(tmp_path / "unbroken.log", "w", encoding="utf-8") as log:
          reference = subprocess.Popen([*cluster, f"--workdir={unbroken}"], stdout=log,
                                       stderr=subprocess.STDOUT, cwd=ROOT)
      if line.startswith("[chief0]") and (m := STEP.search(line)) and int(m.group(1)) >= 12:
        # The whole machine dies: the launcher, then every task.
        run.kill()
        _kill_tasks(killed)
        break
    assert run.finish() == -signal.SIGKILL, _tail(log_path)
    _wait_gone(_task_pids(killed))
    assert reference is not None, _tail(log_path)
    relaunched_at = len(_events(killed))
    run = _Run([*cluster, f"--workdir={killed}"], log_path)
    resumed_at = [int(m.group(1)) for line in run.lines()
                  if line.startswith("[chief0]") and (m := RESUMED.search(line))]
    assert run.finish() == 0, _tail(log_path)
    crashes = _ps_crash_restarts(_events(killed)[relaunched_at:])
    assert reference.wait(timeout=TIMEOUT_SECS) == 0, _tail(tmp_path / "unbroken.log")
  finally:   # nothing left running if an assertion failed half-way
    run.kill()
    if reference is not None:
      reference.kill()
      reference.wait()
    _kill_tasks(killed)
    _kill_tasks(unbroken)
  # One resume, plus one more (from the same or a later checkpoint) per ps crash the launcher
  # recovered from.
  assert len(resumed_at) == 1 + crashes, (resumed_at, crashes)
  assert resumed_at == sorted(resumed_at) and 0 < resumed_at[0] and resumed_at[-1] < 20, resumed_at
  differ = _assert_same_weights(unbroken, killed, 20)
  print(f"resumed at {resumed_at} ({crashes} ps crash(es) recovered); variables not bitwise "
        f"equal: {differ or 'none'}; "
        f"{time.monotonic() - start:.0f} s")
