import json
import subprocess
import sys
import os

import pytest
import tensorflow as tf

from configs import ptb_char_cnn_lstm
from tests import warm
from tfsys.errors import UserError
from tfsys.train import workdir


def test_writes_config_json_and_allows_compatible_changes(tmp_path):
  cfg = ptb_char_cnn_lstm.get_config("smoke")
  assert not workdir.prepare(cfg, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["lstm_units"] == 32
  cfg.train.num_steps = 500            # training longer is a compatible change
  cfg.optim.learning_rate = 0.5
  assert workdir.prepare(cfg, str(tmp_path))
  assert workdir.load_config(str(tmp_path)).train.num_steps == 500


def test_incompatible_resume_names_the_keys(tmp_path):
  cfg = ptb_char_cnn_lstm.get_config("smoke")
  workdir.prepare(cfg, str(tmp_path))
  cfg.model.lstm_units = 64
  cfg.train.batch_size = 8
  with pytest.raises(UserError, match=r"model.lstm_units: 32 -> 64; train.batch_size: 4 -> 8"):
    workdir.prepare(cfg, str(tmp_path))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UserError, match="not writable"):
    workdir.prepare(ptb_char_cnn_lstm.get_config("smoke"), str(blocker / "run"))
  if os.geteuid() != 0:  # root can write anywhere
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(UserError, match="not writable"):
      workdir.prepare(ptb_char_cnn_lstm.get_config("smoke"), str(ro))


# ---------------------------------------------------------------- one run per workdir
from tfsys.errors import WorkdirBusyError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _holder(path, **fields):
  me = workdir.WorkdirLock(str(path)).me
  path.joinpath(workdir.LOCK_FILE).write_text(json.dumps({**me, **fields}))


def test_a_live_holder_on_another_host_is_refused_until_its_heartbeat_is_stale(tmp_path):
  _holder(tmp_path, host="other-host", pid=4242, boot_id="x", command="train.py --workdir=w")
  lock_file = str(tmp_path / workdir.LOCK_FILE)
  now = __import__("time").time()
  os.utime(lock_file, (now - 5, now - 5))              # a heartbeat 5 s ago: alive
  with pytest.raises(WorkdirBusyError, match=r"pid 4242 on other-host.*train.py --workdir=w"
                                             r".*heartbeat is 5 s old"):
    workdir.WorkdirLock(str(tmp_path), stale_secs=60).acquire()
  os.utime(lock_file, (now - 61, now - 61))            # none for 61 s: its host died
  lock = workdir.WorkdirLock(str(tmp_path), stale_secs=60).acquire()
  assert json.loads(open(lock_file).read())["pid"] == os.getpid()
  lock.release()
  assert not os.path.exists(lock_file)


def test_a_holder_with_our_pid_on_another_host_is_not_us(tmp_path):
  """pids repeat across hosts (containers start at 1): only host, boot, pid and start time
  together make a hold this process's own."""
  _holder(tmp_path, host="other-host", command="train.py on another host")
  with pytest.raises(WorkdirBusyError, match="other-host"):
    workdir.WorkdirLock(str(tmp_path), stale_secs=60).acquire()


def test_a_dead_or_reused_pid_on_this_host_is_a_stale_hold(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  _holder(tmp_path, pid=int(dead.stdout), process_start="")   # a process that has exited
  workdir.WorkdirLock(str(tmp_path)).acquire().release()
  # A live pid whose kernel start time differs: the holder died and the pid was reused.
  _holder(tmp_path, pid=os.getppid(), process_start="1")
  workdir.WorkdirLock(str(tmp_path)).acquire().release()
  _holder(tmp_path, pid=os.getppid(),                  # alive, the same process: held
          process_start=workdir._process_start(os.getppid()))  # pylint: disable=protected-access
  with pytest.raises(WorkdirBusyError, match=f"pid {os.getppid()} on "):
    workdir.WorkdirLock(str(tmp_path)).acquire()


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
  (tmp_path / "checkpoints" / "ckpt-120_temp").mkdir(parents=True)
  (tmp_path / "checkpoints" / "ckpt-120_temp" / "part-00000-of-00001").write_text("x")
  (tmp_path / "checkpoints" / "ckpt-100.index").write_text("kept")
  (tmp_path / "config.json.tmp").write_text("{")
  (tmp_path / "config.json").write_text("{}")
  removed = workdir.remove_leftovers(str(tmp_path))
  assert removed == ["checkpoints/ckpt-120_temp", "config.json.tmp"]
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json"]
  assert os.listdir(tmp_path / "checkpoints") == ["ckpt-100.index"]


def test_a_second_trainer_is_refused_and_a_killed_holder_does_not_lock_forever(tmp_path):
  """Real processes: a holder (the lock alone, as a trainer takes it), a trainer refused with
  one line naming it, then kill -9 of the holder and a trainer that takes over and finishes.
  (Each trainer's start-up overlaps what comes before it: tests/warm.py.)"""
  run = tmp_path / "run"
  trainers = [warm.start(stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from tfsys.train import workdir; "
       f"workdir.hold({str(run)!r}); print('held', flush=True); sys.stdin.read()"],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline().strip() == "held"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt-7_temp").mkdir()    # as a save killed midway leaves it
    args = [os.path.join(ROOT, "scripts", "train.py"),
            f"--config={ROOT}/configs/ptb_char_cnn_lstm.py:smoke", f"--workdir={run}",
            "--config.train.num_steps=4", "--config.eval.every_steps=4"]
    refused = warm.run(trainers[0], args, timeout=120)
    assert refused.returncode == WorkdirBusyError.exit_status, refused.stderr[-2000:]
    line = [l for l in refused.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and f"pid {holder.pid} on " in line[0] and "workdir.hold" in line[0]
    assert "Traceback" not in refused.stderr
    assert (run / "checkpoints" / "ckpt-7_temp").is_dir()   # the holder's: left alone
  except BaseException:
    for trainer in trainers:
      warm.stop(trainer)
    raise
  finally:
    holder.kill()
    holder.wait()
  took_over = warm.run(trainers[1], args, timeout=120)
  assert took_over.returncode == 0, took_over.stderr[-3000:]
  assert "from a trainer that died (its process is gone)" in took_over.stderr
  assert not (run / "checkpoints" / "ckpt-7_temp").exists()
  assert not (run / workdir.LOCK_FILE).exists()             # released at the end


def test_precision_and_xla_are_kept_in_config_json_and_a_resume_may_not_change_them(tmp_path):
  from tfsys.train import precision
  cfg = ptb_char_cnn_lstm.get_config("smoke")
  cfg.train.precision = "bfloat16"
  workdir.prepare(cfg, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["train"]["precision"] == "bfloat16"
  assert precision.compute_dtype(workdir.load_config(str(tmp_path))).name == "bfloat16"
  cfg.train.precision = "float32"
  with pytest.raises(UserError, match=r"train.precision: 'bfloat16' -> 'float32'"):
    workdir.prepare(cfg, str(tmp_path))
  # A workdir written before train.precision existed trained in float32: it resumes as that.
  old = tmp_path / "old"
  workdir.prepare(ptb_char_cnn_lstm.get_config("smoke"), str(old))
  saved = json.loads((old / "config.json").read_text())
  del saved["train"]["precision"], saved["train"]["jit_compile"]
  (old / "config.json").write_text(json.dumps(saved))
  assert workdir.prepare(ptb_char_cnn_lstm.get_config("smoke"), str(old))
  xla = ptb_char_cnn_lstm.get_config("smoke")
  xla.train.jit_compile = True        # XLA draws other masks: not half-way through a run
  with pytest.raises(UserError, match=r"train.jit_compile: False -> True"):
    workdir.prepare(xla, str(old))
  cfg.train.precision = "float16"
  assert precision.compute_dtype(cfg) == tf.float16
  cfg.distribute.backend = "sync_backup"   # its loss scaling lives in the all-reduce backends
  with pytest.raises(UserError, match="float16 with --config.distribute.backend=sync_backup"):
    precision.check(cfg)
  cfg.train.precision = "fp8"
  with pytest.raises(UserError, match="must be one of float32, bfloat16, float16, got 'fp8'"):
    precision.compute_dtype(cfg)
