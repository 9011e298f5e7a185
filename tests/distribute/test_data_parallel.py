"""Synchronous data parallelism against one device: MirroredStrategy over 2 logical CPUs, and
MultiWorkerMirroredStrategy over 2 real processes on 127.0.0.1 started by the launcher."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = [os.path.join(ROOT, "scripts", "train.py"), f"--config={ROOT}/configs/ptb_word_lstm.py:smoke",
         # Dropout masks are drawn per replica, so switch it off to compare runs exactly.
         "--config.model.dropout=0", "--config.model.embedding_dropout=0",
         "--config.train.log_every=1", "--config.eval.max_tokens=100"]
STEPS = ["--config.train.num_steps=12"]


def _launch(num_workers, *args):
  return [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"),
          f"--num_workers={num_workers}", "--", *TRAIN, "--config.distribute.backend=multi_worker", *args]


def _run(cmd):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  return proc.stdout + proc.stderr


def _scalars(workdir, tag, run="train"):
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, run), size_guidance={"tensors": 0})
  acc.Reload()
  if tag not in acc.Tags()["tensors"]:
    return np.array([])
  return np.array([float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)])


@pytest.fixture(scope="module")
def single_losses(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("single"))
  _run([sys.executable, *TRAIN, *STEPS, f"--workdir={workdir}"])
  losses = _scalars(workdir, "train/loss")
  assert len(losses) == 12 and losses[-1] < losses[0]   # it learns
  assert not len(_scalars(workdir, "noise/b_simple"))     # one replica: no noise scale
  return losses


@pytest.mark.kernels
def test_mirrored_matches_single(request, tmp_path):
  workdir = str(tmp_path)
  # Four steps per call: a progress line (the mean loss of its four steps) every call. The run
  # goes alongside the single run of `single_losses` (when this test is the first to need it).
  with ThreadPoolExecutor(1) as pool:
    mirrored = pool.submit(_run, [sys.executable, *TRAIN, *STEPS, f"--workdir={workdir}",
                                  "--config.distribute.backend=mirrored",
                                  "--config.distribute.num_logical_cpus=2",
                                  "--config.train.steps_per_loop=4", "--config.train.log_every=4"])
    single_losses = request.getfixturevalue("single_losses")
    mirrored.result()
  np.testing.assert_allclose(_scalars(workdir, "train/loss"),
                             single_losses.reshape(3, 4).mean(axis=1), rtol=2e-4)
  noise = _scalars(workdir, "noise/b_simple")      # every 10 steps with 2 replicas
  assert len(noise) == 1 and np.isfinite(noise).all()
  assert _scalars(workdir, "noise/grad_sq_norm")[0] > 0


def test_mirrored_float16_trains_with_its_loss_scale(tmp_path):
  """train.precision=float16 over 2 replicas: one loss scale for both (the skip decision comes
  from the all-reduced norm), in TensorBoard with the steps skipped."""
  workdir = str(tmp_path)
  _run([sys.executable, *TRAIN, *STEPS, f"--workdir={workdir}", "--config.train.precision=float16",
        "--config.distribute.backend=mirrored", "--config.distribute.num_logical_cpus=2",
        "--config.train.steps_per_loop=4", "--config.train.log_every=4"])
  losses, scales = _scalars(workdir, "train/loss"), _scalars(workdir, "optim/loss_scale")
  assert len(losses) == 3 and np.isfinite(losses).all() and losses[-1] < losses[0], losses
  assert len(scales) == 3 and all(1.0 <= s <= 2.0 ** 15 for s in scales), scales
  assert _scalars(workdir, "optim/skipped_steps")[-1] < 12


def test_two_worker_processes_match_single_and_only_the_chief_writes(single_losses, tmp_path):
  """Four steps per call (a progress line, the mean loss of its four steps, every call), with
  the gradient noise scale (two replicas) in its rows."""
  workdir = str(tmp_path / "run")
  out = _run(_launch(2, *STEPS, f"--workdir={workdir}", "--config.train.steps_per_loop=4",
                     "--config.train.log_every=4"))
  for task in ("worker0", "worker1"):      # both trained, each under its own prefix and log
    assert f"[{task}]" in out
    log = open(os.path.join(workdir, "logs", f"{task}.log")).read()
    assert "step 12/12" in log and "test perplexity" in log
  np.testing.assert_allclose(_scalars(workdir, "train/loss"),
                             single_losses.reshape(3, 4).mean(axis=1), rtol=2e-4)
  noise = _scalars(workdir, "noise/b_simple")      # every 10 steps with 2 replicas
  assert len(noise) == 1 and np.isfinite(noise).all()
  assert len(glob.glob(os.path.join(workdir, "train", "events.*"))) == 1   # the chief's only
  assert os.path.isfile(os.path.join(workdir, "checkpoints", "ckpt-12.index"))
  assert not glob.glob(os.path.join(workdir, "tmp_*"))    # other workers' scratch removed
  assert json.load(open(os.path.join(workdir, "config.json")))["distribute"]["backend"] == "multi_worker"


def test_two_worker_processes_train_the_char_model_several_steps_per_call(tmp_path):
  """The char CNN's embedding gradient has as many rows as the batch has distinct words' chars,
  unequal between workers: its all-reduce inside a call's K-step loop failed with a collective
  shape mismatch until it was summed dense (allreduce.all_reduce_sum)."""
  workdir = str(tmp_path / "run")
  char = [os.path.join(ROOT, "scripts", "train.py"), f"--config={ROOT}/configs/ptb_char_cnn_lstm.py:smoke",
          "--config.train.log_every=4",   # (4 steps a call)
          "--config.eval.max_tokens=100", "--config.eval.num_samples=0"]
  out = _run([sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "--num_workers=2",
              "--", *char, "--config.distribute.backend=multi_worker", "--config.train.num_steps=8",
              "--config.train.steps_per_loop=4", "--config.eval.every_steps=100000",
              f"--workdir={workdir}"])
  losses = {task: re.findall(r"step \d+/8 \| loss ([\d.]+)",
                             open(os.path.join(workdir, "logs", f"{task}.log")).read())
            for task in ("worker0", "worker1")}
  assert len(losses["worker0"]) == 2 and losses["worker0"] == losses["worker1"], (losses, out[-2000:])


def test_two_worker_processes_each_placed_over_two_devices_match_single(single_losses, tmp_path):
  # One replica per worker, its parts over that worker's 2 logical CPUs and the softmax's rows
  # split over both; the gradients all-reduced across the workers as unplaced.
  workdir = str(tmp_path / "run")
  _run(_launch(2, *STEPS, f"--workdir={workdir}",
               "--config.placement.rules=lstm0=CPU:1, softmax=CPU:0+CPU:1"))
  np.testing.assert_allclose(_scalars(workdir, "train/loss"), single_losses, rtol=2e-4)
  plan = json.load(open(os.path.join(workdir, "placement.json")))
  assert plan["devices"] == ["CPU:0", "CPU:1"]
  assert plan["parts"]["lstm0"]["devices"] == ["CPU:1"]
  assert plan["parts"]["softmax"]["devices"] == ["CPU:0", "CPU:1"]


def test_sync_backup_with_every_worker_matches_single(single_losses, tmp_path):
  # N = all workers and b = 0: each step averages both workers' gradients of their halves of
  # the batch, computed by the one step: the update of the whole batch, as under single. The
  # workers place their step over 2 logical CPUs each (the tables stay split over the ps).
  workdir = str(tmp_path / "run")
  _run([sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "--num_ps=1",
        "--num_workers=2", "--", *TRAIN, *STEPS, f"--workdir={workdir}",
        "--config.distribute.backend=sync_backup", "--config.distribute.replicas_to_aggregate=2",
        "--config.distribute.total_num_replicas=2",
        "--config.placement.rules=lstm0=CPU:1, softmax=CPU:1"])
  np.testing.assert_allclose(_scalars(workdir, "train/loss"), single_losses, rtol=2e-4)
  for task in ("worker0", "worker1"):
    log = open(os.path.join(workdir, "logs", f"{task}.log")).read()
    assert "placement: embedding on CPU:0, lstm0 on CPU:1, lstm1 on CPU:0, softmax on CPU:1" in log


def test_kill_every_task_then_relaunch_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  args = [f"--workdir={workdir}", "--config.train.num_steps=60", "--config.train.checkpoint_every=10",
          "--config.train.log_every=10"]
  launcher = subprocess.Popen(_launch(2, *args), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, cwd=ROOT)
  deadline = time.monotonic() + 300
  while not glob.glob(os.path.join(workdir, "checkpoints", "ckpt-20.index")):
    assert launcher.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.2)
  launcher.send_signal(signal.SIGTERM)      # the launcher kills and reaps every task
  assert launcher.wait(timeout=60) != 0
  assert subprocess.run(["pgrep", "-f", workdir], capture_output=True).returncode == 1  # none left
  state = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
  saved = int(state.model_checkpoint_path.rsplit("-", 1)[1])
  assert 20 <= saved < 60
  _run(_launch(2, *args))
  for task in ("worker0", "worker1"):
    log = open(os.path.join(workdir, "logs", f"{task}.log")).read()
    assert f"resuming at step {saved} from" in log and "step 60/60" in log


def test_a_worker_that_never_comes_up_is_named(tmp_path):
  from tfsys.distribute.launch import free_ports
  ports = free_ports(2)
  env = dict(os.environ, TF_CONFIG=json.dumps({
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}}))
  proc = subprocess.run([sys.executable, *TRAIN, f"--workdir={tmp_path}",
                         "--config.distribute.backend=multi_worker",
                         "--config.distribute.startup_timeout_secs=2"],
                        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
  assert proc.returncode != 0
  assert f"[worker0] worker1 (127.0.0.1:{ports[1]}) did not come up within 2 s" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_a_lost_peer_is_one_line_naming_it(tmp_path):
  """worker1 of two SIGKILLed mid-run: worker0 exits with status 3 (a lost task) and one line
  naming worker1 and its address, without a traceback."""
  from tfsys.distribute.launch import cluster_spec
  spec = cluster_spec(num_workers=2)
  procs, logs = {}, {}
  try:
    for i in range(2):
      env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": spec,
                                                    "task": {"type": "worker", "index": i}}))
      logs[i] = open(tmp_path / f"worker{i}.log", "w+", encoding="utf-8")  # noqa: SIM115
      procs[i] = subprocess.Popen([sys.executable, *TRAIN, f"--workdir={tmp_path / 'run'}",
                                   "--config.distribute.backend=multi_worker",
                                   "--config.train.num_steps=100000"],
                                  env=env, stdout=logs[i], stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 180
    while "step 5/" not in (tmp_path / "worker0.log").read_text():
      assert procs[0].poll() is None and time.monotonic() < deadline, "no step 5"
      time.sleep(0.2)
    procs[1].kill()
    assert procs[0].wait(timeout=90) == 3
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  log = (tmp_path / "worker0.log").read_text()
  errors = [l for l in log.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
  assert f"[worker0] lost worker1 ({spec['worker'][1]}) of the all-reduce" in errors[0], errors[0]
