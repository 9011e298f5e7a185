"""SavedModel export: the contract seen from a process that imports only TensorFlow, from
saved_model_cli, and from the scripts' --saved_model; bad inputs; versions never overwritten."""
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.kernels   # serving: .ci/run repeats these with oneDNN on and off

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
CLI = os.path.join(os.path.dirname(PY), "saved_model_cli")

# Runs in a fresh interpreter with nothing of ours importable: only TensorFlow.
ONLY_TF = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
assert "tfsys" not in sys.modules and "models" not in sys.modules
sig = m.signatures
out = {"signatures": sorted(sig)}
score = sig["serving_default"](sentences=tf.constant(json.loads(sys.argv[2])))
out["score"] = {k: v.numpy().tolist() for k, v in score.items()}
raw = sig["serving_default"](sentences=tf.constant([b"the \xff\xfe company \xc3"]))  # not UTF-8
out["raw_bytes"] = [float(raw["log_prob"][0]), int(raw["num_tokens"][0])]
out["raw_embed"] = sig["embed"](words=tf.constant([b"\xff\xfe"]))["embeddings"].shape.as_list()
empty = tf.constant([], tf.string)
out["empty_batch"] = {k: v.shape.as_list() for k, v in
                      sig["serving_default"](sentences=empty).items()}
out["empty_embed"] = sig["embed"](words=empty)["embeddings"].shape.as_list()
long = sig["serving_default"](sentences=tf.constant([" ".join(["the"] * 10000)]))
out["long"] = [float(long["log_prob"][0]), int(long["num_tokens"][0])]
gen = lambda p, n, t, s: sig["generate"](prompt=tf.constant(p), max_words=tf.constant(n),
                                         temperature=tf.constant(t), seed=tf.constant(s))["text"]
out["generate"] = [t.decode() for t in gen(["the company", ""], 6, 1.0, 3).numpy()]
out["generate_again"] = [t.decode() for t in gen(["the company", ""], 6, 1.0, 3).numpy()]
out["greedy"] = [gen(["the"], 4, 0.0, s).numpy()[0].decode() for s in (0, 99)]
out["none"] = [t.decode() for t in gen(["the company"], 0, 1.0, 0).numpy()] + \
              [t.decode() for t in gen(["the company"], -5, 1.0, 0).numpy()]
out["empty_generate"] = gen(tf.constant([], tf.string), 3, 1.0, 0).shape.as_list()
out["bad_temperature"] = []
for t in (-1.0, float("nan"), float("inf")):
  try:
    gen(["the"], 3, t, 0)
    out["bad_temperature"].append(None)
  except tf.errors.InvalidArgumentError as e:
    out["bad_temperature"].append(e.message)
step = sig["step"]
size = step.structured_input_signature[1]["state"].shape[1]
s = step(words=tf.constant(["the", "company"]), state=tf.zeros([2, size]))
out["empty_step"] = {k: v.shape.as_list() for k, v in
                     step(words=empty, state=tf.zeros([0, size])).items()}
out["step"] = {k: v.shape.as_list() for k, v in s.items()}
out["step_log_probs_sum"] = tf.reduce_sum(tf.exp(s["log_probs"]), axis=1).numpy().tolist()
out["step_top"] = [w.decode() for w in s["top_words"][0].numpy()]
try:
  m.signatures["step"](words=tf.constant(["the"]), state=tf.zeros([1, size + 1]))
  out["bad_state"] = None
except (tf.errors.InvalidArgumentError, TypeError) as e:
  out["bad_state"] = str(e)[:300]
out["non_finite_state"] = []
for bad in (float("nan"), float("inf"), -float("inf")):
  state = tf.tensor_scatter_nd_update(tf.zeros([2, size]), [[1, 0]], [bad])   # one entry of row 2
  try:
    step(words=tf.constant(["the", "company"]), state=state)
    out["non_finite_state"].append(None)
  except tf.errors.InvalidArgumentError as e:
    out["non_finite_state"].append(e.message)
emb = sig["embed"](words=tf.constant(["the", "zzyzx-unknown", "x" * 300, "\xff"]))["embeddings"]
out["embed"] = emb.shape.as_list()
out["embed_finite"] = bool(tf.reduce_all(tf.math.is_finite(emb)))
assert "tfsys" not in sys.modules and "models" not in sys.modules
print("RESULT" + json.dumps(out))
"""


def _run(cmd, cwd=ROOT, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, **kw)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  return proc.stdout


def _side_by_side(*calls):
  """Runs independent calls (functions of no argument; none writes what another reads) at the
  same time: each process's start-up is mostly one core's work. Their results, in order."""
  with ThreadPoolExecutor(len(calls)) as pool:
    return [f.result() for f in [pool.submit(call) for call in calls]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A :smoke model trained for 10 steps and exported (twice, by the test of versions).
  Version 1 scores 3 sentences at a time, so that SENTENCES take two slices."""
  tmp = tmp_path_factory.mktemp("export")
  workdir, export_dir = str(tmp / "run"), str(tmp / "export")
  _run([PY, "scripts/train.py", "--config=configs/ptb_char_cnn_lstm.py:smoke",
        f"--workdir={workdir}", "--config.train.num_steps=10", "--config.eval.max_tokens=200"])
  _run([PY, "scripts/export.py", f"--workdir={workdir}", f"--export_dir={export_dir}",
        "--score_rows=3"])
  return workdir, export_dir


SENTENCES = ["the company said it expects to report", "", "xyzzy \xff plugh",
             "a " + "verylongword" * 10]


def test_every_signature_from_a_tensorflow_only_process(exported, tmp_path):
  workdir, export_dir = exported
  # Copy the export elsewhere: it must not refer back to the workdir or our code.
  model_dir = str(tmp_path / "1")
  shutil.copytree(os.path.join(export_dir, "1"), model_dir)
  env = dict(os.environ, PYTHONPATH="")
  # Every process below only reads the workdir or the copy: all five run side by side.
  text = tmp_path / "text.txt"
  text.write_text("\n".join(s for s in SENTENCES if s.split()) + "\n", encoding="utf-8")
  sample = lambda *src: (lambda: _run([PY, "scripts/sample.py", *src, "--prompt=the company",
                                       "--num_words=6", "--seed=3"]).strip())
  out, from_ckpt, from_saved, sample_ckpt, sample_saved = _side_by_side(
      lambda: _run([PY, "-c", ONLY_TF, model_dir, json.dumps(SENTENCES)], cwd=str(tmp_path),
                   env=env),
      lambda: _run([PY, "scripts/evaluate.py", f"--workdir={workdir}", f"--text_file={text}",
                    "--per_sentence"]),
      lambda: _run([PY, "scripts/evaluate.py", f"--saved_model={model_dir}",
                    f"--text_file={text}"]),
      sample(f"--workdir={workdir}"), sample(f"--saved_model={model_dir}"))
  got = json.loads(out.split("RESULT", 1)[1])
  assert got["signatures"] == ["embed", "generate", "serving_default", "step"]
  score = got["score"]
  assert score["num_tokens"] == [8, 1, 4, 3]      # words + the sentence end
  assert all(lp < 0 for lp in score["log_prob"])
  np.testing.assert_allclose(score["perplexity"],
                             np.exp(-np.array(score["log_prob"]) / np.array(score["num_tokens"])),
                             rtol=1e-5)
  # An empty request gets empty answers from every signature (oneDNN's conv1d once broke this).
  assert got["empty_batch"] == {"log_prob": [0], "num_tokens": [0], "perplexity": [0]}
  assert got["empty_embed"][0] == 0
  assert {k: v[0] for k, v in got["empty_step"].items()} == {k: 0 for k in got["step"]}
  assert got["long"][1] == 10001 and np.isfinite(got["long"][0])
  assert got["raw_bytes"][1] == 5 and np.isfinite(got["raw_bytes"][0]) and got["raw_bytes"][0] < 0
  assert got["raw_embed"][0] == 1
  assert got["generate"] == got["generate_again"]               # the same seed, the same text
  assert got["generate"][0].startswith("the company ")
  assert got["none"] == ["the company", "the company"]           # max_words 0 or negative
  greedy = got["greedy"]                                         # temperature 0: no randomness
  assert greedy[0] == greedy[1] and len(greedy[0].split()) >= 2
  assert got["empty_generate"] == [0]
  # A negative, NaN or infinite temperature is a request error naming it (NaN compares false
  # with 0, so it once sampled on NaN logits; infinity sampled uniformly).
  for message, value in zip(got["bad_temperature"], ("-1", "nan", "inf")):
    assert message is not None and "temperature must be >= 0 and finite" in message
    assert f"got] [{value}]" in message
  assert got["step"]["log_probs"][0] == 2 and got["step"]["top_words"] == [2, 10]
  np.testing.assert_allclose(got["step_log_probs_sum"], [1.0, 1.0], rtol=1e-4)
  assert got["bad_state"] is not None
  # A NaN or infinite state once answered all-NaN log_probs with top_words ranked on NaN.
  for message, kind in zip(got["non_finite_state"], ("NaN", "Inf", "Inf")):
    assert message is not None and "state must be finite" in message and f"had {kind}" in message
  assert got["embed"][0] == 4 and got["embed_finite"]

  # The same scores and text in process, from the checkpoint (the scripts' own paths).
  ppl = lambda out: float(out.split("perplexity ")[1].split()[0])
  assert ppl(from_ckpt) == pytest.approx(ppl(from_saved), rel=1e-4)
  expected = sum(score["log_prob"][k] for k in (0, 2, 3)) / sum(score["num_tokens"][k] for k in (0, 2, 3))
  assert ppl(from_saved) == pytest.approx(float(np.exp(-expected)), rel=1e-3)
  assert sample_ckpt == sample_saved == got["generate"][0]


def test_saved_model_cli_show_and_run(exported):
  _, export_dir = exported
  model_dir = os.path.join(export_dir, "1")
  shown, ran = _side_by_side(
      lambda: _run([CLI, "show", "--dir", model_dir, "--all"]),
      lambda: _run([CLI, "run", "--dir", model_dir, "--tag_set", "serve", "--signature_def",
                    "serving_default", "--input_exprs",
                    "sentences=['the company said', 'a b c']"]))
  for name in ("serving_default", "generate", "step", "embed", "sentences", "log_prob"):
    assert name in shown
  assert "log_prob" in ran and "perplexity" in ran


def test_a_second_export_is_a_new_version(exported):
  workdir, export_dir = exported
  first = os.path.join(export_dir, "1", "saved_model.pb")
  before = os.stat(first).st_mtime_ns
  out = _run([PY, "scripts/export.py", f"--workdir={workdir}", f"--export_dir={export_dir}"])
  assert f"to {os.path.join(export_dir, '2')}" in out
  assert sorted(os.listdir(export_dir)) == ["1", "2"]        # no temporary directory left
  assert os.stat(first).st_mtime_ns == before


def test_export_and_saved_model_errors(tmp_path):
  run = lambda *args: (lambda: subprocess.run([PY, *args], capture_output=True, text=True,
                                              cwd=ROOT))
  # Three failing commands, side by side (nothing is written: each only fails).
  no_config, no_model, bad_rows = _side_by_side(
      run("scripts/export.py", f"--workdir={tmp_path}/none", f"--export_dir={tmp_path}/e"),
      run("scripts/sample.py", f"--saved_model={tmp_path}"),
      run("scripts/export.py", f"--workdir={tmp_path}/none", f"--export_dir={tmp_path}/e",
          "--score_rows=0"))
  proc = no_config
  assert proc.returncode != 0 and "config.json not found" in proc.stderr and "Traceback" not in proc.stderr
  proc = no_model
  assert proc.returncode != 0 and "no SavedModel in" in proc.stderr
  proc = bad_rows
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == \
      "error: --score_rows must be a positive number of sentences, got 0"


# Rows of different lengths: the empty sentence, one word, and one longer than SCORE_CHUNK
# (its positions take two chunks), so that slices pad to different lengths.
SLICED = ["the company said it expects to report", "", "a", "xyzzy \xff plugh",
          " ".join(["the company said"] * 30), "stocks fell", "report", "it is"]


def _untrained(config_name: str, arg: str = "smoke"):
  """A model of a config's variant with its initial weights, and a small vocabulary: scoring
  in slices is compared with scoring at once, which needs no training."""
  import importlib
  import models
  from tfsys.data import Vocabulary
  config = importlib.import_module(f"configs.{config_name}").get_config(arg)
  words = ["<unk>", "<eos>", "the", "company", "said", "it", "expects", "to", "report", "a",
           "stocks", "fell", "is"]
  vocab = Vocabulary(words)
  return config, vocab, models.build(config.model, vocab.words, seed=config.seed)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_scoring_in_slices_gives_the_scores_of_the_whole_batch(tmp_path, rows):
  import tensorflow as tf
  from tfsys.serving import in_process_server
  _, vocab, model = _untrained("ptb_char_cnn_lstm")
  # Records the most rows the LSTM is run on in one call: the memory a request needs.
  most_rows = tf.Variable(0)
  hidden = model.hidden

  def counting(x, state, **kw):
    most_rows.assign(tf.maximum(most_rows, tf.shape(x)[0]))
    return hidden(x, state, **kw)
  model.hidden = counting
  batch = tf.constant(SLICED)
  whole = in_process_server(model, vocab, str(tmp_path), score_rows=10**6).score(batch)
  assert int(most_rows.numpy()) == len(SLICED)
  most_rows.assign(0)
  sliced_server = in_process_server(model, vocab, str(tmp_path), score_rows=rows)
  sliced = sliced_server.score(batch)
  assert int(most_rows.numpy()) == rows          # 8 rows in slices of 1, 3 (3 + 3 + 2) or 8
  assert sliced["num_tokens"].numpy().tolist() == whole["num_tokens"].numpy().tolist() \
      == [8, 1, 2, 4, 91, 3, 2, 3]
  # Equal up to float32 summation order (a slice pads to its own longest sentence).
  for key in ("log_prob", "perplexity"):
    np.testing.assert_allclose(sliced[key].numpy(), whole[key].numpy(), rtol=2e-6, atol=0)
  empty = sliced_server.score(tf.constant([], tf.string))
  assert {k: v.shape.as_list() for k, v in empty.items()} == {k: [0] for k in sliced}


def test_a_bad_score_rows_is_a_user_error(tmp_path):
  from tfsys.errors import UserError
  from tfsys.serving import in_process_server
  _, vocab, model = _untrained("ptb_char_cnn_lstm")
  for bad in (0, -5, 2.5):
    with pytest.raises(UserError, match="--score_rows must be a positive number of sentences"):
      in_process_server(model, vocab, str(tmp_path), score_rows=bad)


@pytest.mark.parametrize("flag,message", [
    ("--num_words=-1", "error: --num_words must be >= 0, got -1"),
    ("--temperature=nan", "error: --temperature must be >= 0 and finite (0 = greedy), got nan"),
    ("--seed=4294967296", "error: --seed must fit in 32 bits (-2147483648 to 2147483647), "
                          "got 4294967296")])
def test_sample_flags_are_checked_alike_in_both_modes(exported, flag, message):
  # --saved_model once printed an empty line and exited 0 for --num_words=-1.
  workdir, export_dir = exported
  for source in (f"--workdir={workdir}", f"--saved_model={os.path.join(export_dir, '1')}"):
    proc = subprocess.run([PY, "scripts/sample.py", source, "--prompt=the", flag],
                          capture_output=True, text=True, cwd=ROOT)
    # (TensorFlow's C++ start-up lines come before ours on some machines: the last line counts.)
    last = proc.stderr.strip().splitlines()[-1]
    assert (proc.returncode, proc.stdout, last) == (2, "", message), source
    assert "Traceback" not in proc.stderr


def test_sample_from_a_saved_model_refuses_more_words_than_it_generates(exported):
  _, export_dir = exported
  proc = subprocess.run([PY, "scripts/sample.py", f"--saved_model={os.path.join(export_dir, '1')}",
                         "--num_words=1001"], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 2 and proc.stdout == ""
  assert proc.stderr.strip().splitlines()[-1] == ("error: --num_words=1001 is more than a SavedModel generates "
                                 "(1000): lower it, or sample from the --workdir")


ONLY_TF_SCORE = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
assert "tfsys" not in sys.modules and "models" not in sys.modules
score = m.signatures["serving_default"](sentences=tf.constant(json.loads(sys.argv[2])))
print("RESULT" + json.dumps({k: v.numpy().tolist() for k, v in score.items()}))
"""


def test_a_run_with_split_tables_exports_whole_and_scores_like_the_unsplit_run(exported, tmp_path):
  # The same run as `exported`, its parts on 4 logical CPUs and the softmax's rows split over
  # two of them: the SavedModel holds the table whole, loads with TensorFlow alone on a
  # CPU-only process, and scores as the unsplit run's export does.
  workdir, export_dir = str(tmp_path / "run"), str(tmp_path / "export")
  _run([PY, "scripts/train.py", "--config=configs/ptb_char_cnn_lstm.py:smoke",
        f"--workdir={workdir}", "--config.train.num_steps=10", "--config.eval.max_tokens=200",
        "--config.distribute.num_logical_cpus=4",
        "--config.placement.rules=char_cnn=CPU:1, lstm0=CPU:2, softmax=CPU:0+CPU:3"])
  assert json.load(open(os.path.join(workdir, "placement.json")))["parts"]["softmax"][
      "devices"] == ["CPU:0", "CPU:3"]
  _run([PY, "scripts/export.py", f"--workdir={workdir}", f"--export_dir={export_dir}",
        "--score_rows=3"])
  env = dict(os.environ, PYTHONPATH="", CUDA_VISIBLE_DEVICES="")
  score = lambda d: json.loads(_run([PY, "-c", ONLY_TF_SCORE, os.path.join(d, "1"),
                                     json.dumps(SENTENCES)], cwd=str(tmp_path),
                                    env=env).split("RESULT", 1)[1])
  split, whole = score(export_dir), score(exported[1])
  assert split["num_tokens"] == whole["num_tokens"]
  np.testing.assert_allclose(split["log_prob"], whole["log_prob"], rtol=1e-4)
