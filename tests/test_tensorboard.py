"""TensorBoard as its users see it: the installed server started on smoke runs' workdirs (a word
LSTM, a sentence VAE, a sync_backup cluster) and read over the HTTP API its dashboards use
(scalars equal to what was written and printed, samples, histograms, the step's graph, a step
profile in the Profile tab, sync SGD's used and dropped gradients); and monitor.profile_steps."""
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import ptb_vae, ptb_word_lstm
from tests.conftest import SENTENCES
from tests.tb_http import TensorBoard, check_profile, check_workdir
from tfsys.errors import UserError
from tfsys.monitor.profile import StepProfiler, parse_profile_steps
from tfsys.train import train_and_evaluate

PROFILE = (3, 5)   # the steps the LM run traces
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Chen et al. 2016's sync SGD with N = 2 of 3 workers, worker 0 a straggler: 0.2 s late every
# step (x (1 + Pareto(50)), no heavy tail), so what TensorBoard shows does not hang on a race.
SYNC = ["--config.distribute.backend=sync_backup", "--config.distribute.replicas_to_aggregate=2",
        "--config.distribute.total_num_replicas=3", "--config.distribute.straggler.workers=0",
        "--config.distribute.straggler.scale_ms=200", "--config.distribute.straggler.shape=50"]


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def _train(config, workdir) -> str:
  """Trains in this process; returns what it logged (absl's INFO lines)."""
  absl = logging.getLogger("absl")
  lines, level = _Lines(), absl.level
  absl.addHandler(lines)
  absl.setLevel(logging.INFO)
  try:
    train_and_evaluate(config, workdir)
  finally:
    absl.removeHandler(lines)
    absl.setLevel(level)
  return "\n".join(lines.lines)


def _start_sync_cluster(workdir, console):
  """The README's sync_backup command (1 ps, a chief, 3 workers on 127.0.0.1), started in the
  background; it also asks for a profile, which this backend declines."""
  return subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "--num_ps=1",
       "--num_workers=3", "--", os.path.join(ROOT, "scripts", "train.py"),
       f"--config={ROOT}/configs/ptb_word_lstm.py:smoke", f"--workdir={workdir}", *SYNC,
       "--config.monitor.profile_steps=%d,%d" % PROFILE],
      stdout=console, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _stop(cluster):
  if cluster.poll() is None:   # the launcher SIGKILLs every task's process group on SIGTERM
    os.killpg(cluster.pid, signal.SIGTERM)
    cluster.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A word-LSTM run that profiles steps 3-5, a sentence-VAE run and a sync_backup cluster's
  run, side by side under one log directory (runs lm/, vae/ and sync/ train and eval) served
  by one TensorBoard. The cluster's five processes start first and run alongside the two
  in-process runs: its start-up and its chief's waits for gradients overlap their training.
  The VAE reads the small text corpus of conftest.py: it evaluates on every sentence of its
  test split (PTB's would take seconds, and what is served does not depend on the corpus)."""
  root = tmp_path_factory.mktemp("tb")
  console_path = tmp_path_factory.mktemp("sync_console") / "launcher.log"   # outside the logdir
  corpus = tmp_path_factory.mktemp("corpus")                                 # outside the logdir
  for split, lines in (("train", SENTENCES), ("valid", SENTENCES[:10]), ("test", SENTENCES[5:15])):
    (corpus / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  with open(console_path, "w", encoding="utf-8") as console:
    cluster = _start_sync_cluster(str(root / "sync"), console)
    try:
      lm = ptb_word_lstm.get_config("smoke")
      lm.monitor.profile_steps = "%d,%d" % PROFILE
      vae = ptb_vae.get_config("smoke")
      vae.data.corpus = "text"
      for split in ("train", "valid", "test"):
        vae.data[f"{split}_path"] = str(corpus / f"{split}.txt")
      logs = {"lm": _train(lm, str(root / "lm")), "vae": _train(vae, str(root / "vae"))}
      # Generous: alone it takes about a minute, but other test runs may share the 2 cores.
      code = cluster.wait(timeout=600)
    except subprocess.TimeoutExpired:
      code = "none in 600 s"
    finally:
      _stop(cluster)
  with open(console_path, encoding="utf-8", errors="replace") as f:
    assert code == 0, f"sync_backup cluster: status {code}\n{f.read()[-4000:]}"
  with open(root / "sync" / "logs" / "chief0.log", encoding="utf-8") as f:
    logs["sync"] = f.read()   # the chief's own lines: progress, evaluations, totals
  with TensorBoard(str(root)) as tb:
    yield tb, root, logs


def test_lm_run_as_tensorboard_serves_it(runs):
  tb, root, logs = runs
  served = check_workdir(tb, str(root / "lm"), "lm/", log_text=logs["lm"])
  assert served["lm/train"]["train/loss"][0] == [10, 20, 30]     # train.log_every, smoke: 30 steps
  assert served["lm/eval"]["eval/perplexity"][0] == [20, 30]     # eval.every_steps and the end
  rates = served["lm/train"]["optim/learning_rate"][1]
  assert rates == [pytest.approx(rates[0])] * 3 and rates[0] > 0
  assert "profiling steps 3 to 5" in logs["lm"] and "profile of steps 3 to 5 written" in logs["lm"]


def test_lm_profile_in_the_profile_tab(runs):
  tb, root, _ = runs
  check_profile(tb, str(root / "lm"), "lm/", *PROFILE)


def test_vae_run_as_tensorboard_serves_it(runs):
  tb, root, logs = runs
  served = check_workdir(tb, str(root / "vae"), "vae/", log_text=logs["vae"])
  train = served["vae/train"]
  for tag in ("train/kl", "train/reconstruction_nll", "train/elbo", "train/kl_weight",
              "train/active_units", "train/mutual_info"):
    assert tag in train, sorted(train)
  kl, rec, elbo = (np.array(train[t][1]) for t in ("train/kl", "train/reconstruction_nll",
                                                    "train/elbo"))
  assert (kl >= 0).all() and (rec > 0).all()
  np.testing.assert_allclose(elbo, -(rec + kl), rtol=1e-5)
  weights = train["train/kl_weight"][1]   # logistic annealing over 20 steps (smoke): rising
  assert all(0 < a < b < 1 for a, b in zip(weights, weights[1:])), weights
  ev = served["vae/eval"]
  for tag in ("eval/kl", "eval/nll", "eval/elbo", "eval/test_nll", "eval/test_kl"):
    assert tag in ev and all(map(math.isfinite, ev[tag][1])), (tag, sorted(ev))
  # No profile was asked for: the profile plugin lists the LM's trace only.
  assert not os.path.exists(root / "vae" / "train" / "plugins")
  assert all(r.startswith("lm/") for r in tb.get("/data/plugin/profile/runs"))


def test_sync_backup_run_as_tensorboard_serves_it(runs):
  """What a sync_backup user looks at: the loss (the mean of the used workers' losses), and per
  step how many gradients were used and dropped and how long the step took; per worker at each
  progress line, how often it was used or dropped. Checked against the event files (in
  check_workdir) and against the chief's own step record (sync_steps.jsonl) and console."""
  tb, root, logs = runs
  workdir = root / "sync"
  # Only the chief writes TensorBoard: no worker's or ps task's run appears.
  assert sorted(r for r in tb.get("/data/runs") if r.startswith("sync/")) == ["sync/eval",
                                                                              "sync/train"]
  served = check_workdir(tb, str(workdir), "sync/", log_text=logs["sync"])
  train = served["sync/train"]
  with open(workdir / "sync_steps.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  steps = [r["step"] for r in records]
  assert steps == list(range(1, 31)), steps

  # One point per step, not per progress line.
  assert train["sync/gradients_used"] == (steps, [2.0] * 30)
  assert train["sync/gradients_dropped"] == (steps, [float(len(r["dropped"])) for r in records])
  secs_steps, secs = train["sync/step_secs"]
  assert secs_steps == steps
  np.testing.assert_allclose(secs, [r["secs"] for r in records], atol=6e-5)   # record: 4 decimals

  # Per worker, cumulative at each progress line (train.log_every = 10).
  for w in range(3):
    for what, count in (("used", lambda r: w in r["used"]),
                        ("dropped", lambda r: sum(v == w for v, _, _ in r["dropped"]))):
      tag_steps, values = train[f"sync/{what}_by/worker{w}"]
      assert tag_steps == [10, 20, 30], (what, w, tag_steps)
      assert values == [float(sum(map(count, records[:s]))) for s in tag_steps], (what, w, values)
  used = [float(len(r["used"])) for r in records]
  assert sum(train[f"sync/used_by/worker{w}"][1][-1] for w in range(3)) == sum(used) == 60
  # The straggler is the one a user should spot: dropped most, used least.
  final = {what: [train[f"sync/{what}_by/worker{w}"][1][-1] for w in range(3)]
           for what in ("used", "dropped")}
  assert final["dropped"][0] > 0 and final["dropped"][0] == max(final["dropped"]), final
  assert final["used"][0] == min(final["used"]), final
  # ... the same totals the chief printed at the end.
  totals = re.search(r"gradients used per worker \[([\d, ]+)\], dropped per worker \[([\d, ]+)\]",
                     logs["sync"])
  assert totals, logs["sync"][-3000:]
  for what, printed in zip(("used", "dropped"), totals.groups()):
    assert [float(n) for n in printed.split(",")] == final[what], (what, printed)

  # No profile under this backend: the chief says so, and the Profile tab has none of it.
  assert "not traced under the sync_backup backend" in logs["sync"]
  assert not os.path.exists(workdir / "train" / "plugins")
  assert not any(r.startswith("sync/") for r in tb.get("/data/plugin/profile/runs"))


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's chromium (apt-get install -y chromium)")
def test_screenshot_script_shows_the_curves(runs, tmp_path):
  """scripts/tensorboard_screenshot.py on the sync run: a PNG of the window with both curves."""
  Image = pytest.importorskip("PIL.Image")
  _, root, _ = runs
  out = tmp_path / "scalars.png"
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "tensorboard_screenshot.py"),
       f"--logdir={root / 'sync'}", f"--out={out}", "--width=1280", "--height=1000",
       "--tag_filter=^(train/loss|sync/gradients_used)$"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TensorBoard's scalars of" in proc.stdout, proc.stdout
  pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
  assert pixels.shape == (1000, 1280, 3)
  # Both tags are the train run's, drawn in the first colour of TensorBoard 2.21's palette
  # (#425066). Right of the run list an empty or still-loading page has none of it; two drawn
  # cards have about 1,100 such pixels (their curves and two legend dots of ~50).
  train_colour = np.abs(pixels[:, 260:] - [0x42, 0x50, 0x66]).sum(-1) < 30
  assert train_colour.sum() > 400, train_colour.sum()


# ------------------------------------------------------------------- monitor.profile_steps
@pytest.mark.parametrize("spec", ["5", "b,a", "7,3", "-1,2", "0,2", "1,2,3", "1;2"])
def test_a_bad_profile_spec_is_one_line_naming_the_flag(spec):
  with pytest.raises(UserError) as e:
    parse_profile_steps(spec)
  message = str(e.value)
  assert "--config.monitor.profile_steps" in message and "A,B" in message and "\n" not in message


def test_profile_spec_forms():
  assert parse_profile_steps("") is None
  assert parse_profile_steps("10,12") == (10, 12)
  assert parse_profile_steps(" 4 , 4 ") == (4, 4)


def test_a_bad_profile_spec_fails_before_any_work(tmp_path):
  config = ptb_word_lstm.get_config("smoke")
  config.monitor.profile_steps = "7,3"
  with pytest.raises(UserError, match="profile_steps"):
    train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_a_run_resumed_past_the_first_step_is_not_traced(tmp_path, caplog):
  resumed = StepProfiler("5,8", str(tmp_path))
  with caplog.at_level(logging.INFO, logger="absl"):
    resumed.begin(start=6)
  assert "resumes at step 7, past step 5: no profile" in caplog.text
  not_chief = StepProfiler("1,2", str(tmp_path))
  not_chief.begin(start=0, enabled=False)
  for profiler, steps in ((resumed, range(7, 10)), (not_chief, range(1, 4))):
    for step in steps:   # no trace starts, none is written
      profiler.before(step)
      profiler.after(step)
    profiler.stop()
  assert not os.listdir(tmp_path)
  ps = StepProfiler("1,2", str(tmp_path))
  with caplog.at_level(logging.INFO, logger="absl"):
    ps.unsupported("sync_backup")
  assert "not traced under the sync_backup backend" in caplog.text and ps.steps is None
