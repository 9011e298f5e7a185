"""The real scripts as a user runs them: train, get killed, resume, evaluate, sample, TensorBoard."""
import glob
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tensorboard.backend.event_processing import event_accumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "ptb_char_cnn_lstm.py")


def _script(name, *args, timeout=300, stdout_only=False):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  return proc.returncode, proc.stdout if stdout_only else proc.stdout + proc.stderr


def _wait_for(path_glob, proc, timeout=180):
  """Polls until a file matching path_glob exists (the condition, not a fixed sleep)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if glob.glob(path_glob):
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early with {proc.returncode}")
    time.sleep(0.2)
  raise AssertionError(f"timed out waiting for {path_glob}")


def test_train_kill_resume_evaluate_sample(tmp_path):
  workdir = str(tmp_path / "run")
  args = [f"--config={CONFIG}:smoke", f"--workdir={workdir}", "--config.train.num_steps=60",
          "--config.train.checkpoint_every=20", "--config.eval.every_steps=30"]
  log = open(tmp_path / "first.log", "w")
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train.py"), *args],
                          stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  try:
    _wait_for(os.path.join(workdir, "checkpoints", "ckpt-20.index"), proc)
  finally:
    proc.send_signal(signal.SIGKILL)   # a crash: no chance to save anything more
    proc.wait()
  saved = sorted(int(p.rsplit("-", 1)[1].split(".")[0])
                 for p in glob.glob(os.path.join(workdir, "checkpoints", "ckpt-*.index")))
  assert saved and saved[-1] < 60

  code, out = _script("train.py", *args)
  assert code == 0, out
  assert f"resuming at step {saved[-1]} from" in out
  assert "test perplexity" in out and "tensorboard --logdir" in out
  assert "step 60/60" in out and f"step {saved[-1] + 10}/60" in out

  text = tmp_path / "mine.txt"
  text.write_text("the company said it would sell shares\nprices rose sharply\n")
  # The scripts only read the workdir: they run side by side (their start-ups are mostly one
  # core's work each).
  sample = lambda: _script("sample.py", f"--workdir={workdir}", "--prompt=the company",
                           "--num_words=8", "--seed=7", stdout_only=True)[1].strip()
  with ThreadPoolExecutor(4) as pool:
    # (PTB's valid split in 74 batches of 100 rows, not 738 of the config's 10)
    valid = pool.submit(_script, "evaluate.py", f"--workdir={workdir}", "--split=valid",
                        "--batch_size=100")
    mine = pool.submit(_script, "evaluate.py", f"--workdir={workdir}", f"--text_file={text}")
    runs = [pool.submit(sample) for _ in range(2)]
    (code, out), (text_code, text_out) = valid.result(), mine.result()
    runs = [r.result() for r in runs]
  assert code == 0 and "ckpt-60: valid split: perplexity" in out, out
  assert text_code == 0 and "(11 tokens" in text_out, text_out   # 10 words + 2 sentence ends, minus the first
  assert runs[0] == runs[1] and runs[0].startswith("the company")

  # TensorBoard: the event files hold the promised tags in runs train and eval.
  def tags(run, kind):
    acc = event_accumulator.EventAccumulator(os.path.join(workdir, run),
                                             size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()[kind]), acc
  train_tags, acc = tags("train", "tensors")
  assert {"train/loss", "train/perplexity", "optim/learning_rate", "optim/grad_norm",
          "perf/words_per_sec", "perf/step_secs"} <= train_tags, train_tags
  assert any(t.startswith("weights/") for t in train_tags)
  # The step's graph, as tf.summary.trace_export stores it for TensorBoard's graphs plugin.
  assert acc.SummaryMetadata("train_step").plugin_data.plugin_name == "graph_run_metadata_graph"
  eval_tags, _ = tags("eval", "tensors")
  assert {"eval/perplexity", "eval/samples", "eval/test_perplexity"} <= eval_tags, eval_tags


BAD_INPUTS = [
    ([f"--config={CONFIG}:smoke", "--workdir=W", "--config.model.lstm_unit=3"],
     'unknown config key in an override: lstm_unit. Did you mean "lstm_units"'),
    ([f"--config={CONFIG}:smok", "--workdir=W"], "unknown config variant 'smok'"),
    (["--config=configs/missing.py", "--workdir=W"], "No such file or directory"),
    ([f"--config={CONFIG}:smoke", "--workdir=/proc/no/such"], "is not writable"),
    ([f"--config={CONFIG}:smoke", "--workdir=W", "--config.data.corpus=text",
      "--config.data.train_path=/no/such.txt"], "train text not found: /no/such.txt"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
  """train.py on each of BAD_INPUTS (each its own workdir W), all at once: each is a start-up
  (mostly one core's work) and an error. (status, output) by index."""
  tmp = tmp_path_factory.mktemp("bad_input")
  with ThreadPoolExecutor(len(BAD_INPUTS)) as pool:
    return list(pool.map(lambda k: _script("train.py", *(a.replace("=W", f"={tmp}/w{k}")
                                                         for a in BAD_INPUTS[k][0])),
                         range(len(BAD_INPUTS))))


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)),
                         ids=[message for _, message in BAD_INPUTS])
def test_bad_input_is_one_clear_line(case, bad_input_runs):
  message = BAD_INPUTS[case][1]
  code, out = bad_input_runs[case]
  assert code == 2, out
  assert "Traceback" not in out and message in out, out
