"""The sentence VAE through the real scripts: train :smoke, sample, reconstruct, interpolate,
impute, evaluate, export, and every signature called from a process that imports only
TensorFlow, bad inputs included. Also: it trains under a data-parallel backend."""
import functools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

ONLY_TF = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
assert "tfsys" not in sys.modules and "models" not in sys.modules
sig = m.signatures
out = {"signatures": sorted(sig)}
sentences = ["the company said", "", "zzyzx qqq unknownword", " ".join(["the"] * 50)]
s = sig["serving_default"](sentences=tf.constant(sentences))
out["score"] = {k: v.numpy().tolist() for k, v in s.items()}
e = sig["encode"](sentences=tf.constant(sentences))
out["encode"] = {k: v.shape.as_list() for k, v in e.items()}
out["encode_truncated"] = e["truncated"].numpy().tolist()
d = sig["decode"](z=e["mean"], temperature=tf.constant(0.0), seed=tf.constant(0))
out["decode"] = [t.decode() for t in d["text"].numpy()]
try:
  sig["decode"](z=tf.zeros([1, e["mean"].shape[1] + 1]), temperature=tf.constant(0.0),
                seed=tf.constant(0))
  out["bad_z"] = None
except (tf.errors.InvalidArgumentError, ValueError) as err:
  out["bad_z"] = str(err)[:300]
smp = lambda seed: sig["sample"](count=tf.constant(3), temperature=tf.constant(1.0),  # noqa: E731
                                 seed=tf.constant(seed))["text"].numpy().astype(str).tolist()
out["sample"] = [smp(5), smp(5), smp(6)]
i = sig["interpolate"](first=tf.constant("the company said"), second=tf.constant("stocks fell"),
                       steps=tf.constant(4))
out["interpolate"] = {k: v.shape.as_list() for k, v in i.items()}
# An empty request gets empty answers from every signature that takes a batch.
empty = tf.constant([], tf.string)
out["empty_batch"] = {name: {k: v.shape.as_list() for k, v in sig[name](sentences=empty).items()}
                      for name in ("serving_default", "score", "encode")}
dim = e["mean"].shape[1]
out["empty_decode"] = sig["decode"](z=tf.zeros([0, dim]), temperature=tf.constant(1.0),
                                    seed=tf.constant(0))["text"].shape.as_list()
out["empty_sample"] = {k: v.shape.as_list() for k, v in sig["sample"](
    count=tf.constant(0), temperature=tf.constant(1.0), seed=tf.constant(0)).items()}
try:   # interpolate has no batch: its smallest request is 2 steps, fewer is an error
  sig["interpolate"](first=tf.constant("a"), second=tf.constant("b"), steps=tf.constant(0))
  out["interpolate_0"] = None
except tf.errors.InvalidArgumentError as err:
  out["interpolate_0"] = err.message[:300]
assert "tfsys" not in sys.modules and "models" not in sys.modules
print("RESULT" + json.dumps(out))
"""


def _run(cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, **kw)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  return proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("vae")
  workdir = str(tmp / "run")
  out, _ = _run([PY, "scripts/train.py", "--config=configs/ptb_vae.py:smoke",
                 f"--workdir={workdir}", "--config.train.num_steps=20", "--config.model.feed_z=true"])
  assert "test NLL" in out and "KL" in out and "TensorBoard: tensorboard --logdir" in out
  return tmp, workdir


@pytest.fixture(scope="module")
def ckpt_sample(trained):
  """sample.py's three sentences from the checkpoint (seed 4, temperature 1): a function that
  runs it on its first call (in whichever test comes first) and gives the same output after."""
  _, workdir = trained
  return functools.cache(lambda: _run([PY, "scripts/sample.py", f"--workdir={workdir}",
                                       "--num_sentences=3", "--seed=4", "--temperature=1"])[0])


def test_train_writes_the_vae_metrics_and_results(trained):
  _, workdir = trained
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  assert r["step"] == 20
  for key in ("test_nll", "test_kl", "test_elbo", "test_reconstruction_nll", "test_active_units",
              "test_mutual_info", "valid_nll", "test_elbo_perplexity"):
    assert key in r, key
  assert r["test_nll"] <= -r["test_elbo"] + 1e-3          # the bound is at least the ELBO
  assert any(s.startswith("prior: ") for s in r["samples"])
  assert any(s.startswith("reconstruct: ") for s in r["samples"])
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  tags = set()
  for run in ("train", "eval"):
    acc = EventAccumulator(os.path.join(workdir, run))
    acc.Reload()
    tags |= set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
  for tag in ("train/kl", "train/kl_weight", "train/active_units", "train/mutual_info", "train/elbo", "train/word_dropout",
              "train/reconstruction_nll", "eval/nll", "eval/kl", "eval/perplexity",
              "eval/elbo_perplexity", "eval/active_units", "eval/mutual_info", "eval/samples"):
    assert tag in tags, tag


def test_tools_sample_reconstruct_homotopy_impute_evaluate(trained, ckpt_sample):
  _, workdir = trained
  long = " ".join(["the"] * 45)      # :smoke's max_length is 30
  sample = [PY, "scripts/sample.py", f"--workdir={workdir}", "--num_sentences=3", "--seed=4",
            "--temperature=1"]
  # Every tool only reads the workdir: they run side by side.
  with ThreadPoolExecutor(3) as pool:
    first = pool.submit(ckpt_sample)
    bad = pool.submit(subprocess.run, [PY, "scripts/vae.py", f"--workdir={workdir}",
                                       "--mode=homotopy", "--sentence=a", "--sentence2=b",
                                       "--steps=1"],
                      capture_output=True, text=True, cwd=ROOT, timeout=120)
    runs = list(pool.map(_run, [
        sample,
        [PY, "scripts/vae.py", f"--workdir={workdir}", "--mode=homotopy",
         "--sentence=the company said", "--sentence2=stocks fell sharply", "--steps=4"],
        [PY, "scripts/vae.py", f"--workdir={workdir}", "--mode=impute",
         "--sentence=the company said it will buy the unit", "--num_missing=2"],
        [PY, "scripts/vae.py", f"--workdir={workdir}", "--mode=reconstruct",
         f"--sentence={long}", "--sentence=zzyzx unknownword"],
        [PY, "scripts/evaluate.py", f"--workdir={workdir}", "--split=valid"]]))
    proc, out = bad.result(), first.result()
  (again, _), (homotopy, _), (impute, _), (reconstruct, err), (evaluate, _) = runs
  assert len(out.strip().splitlines()) == 3
  assert again == out
  assert [line.split(":")[0] for line in homotopy.strip().splitlines()] == ["0", "1", "2", "3"]
  assert impute.startswith("the company said it will buy")
  assert "cut to their first 30 words" in err and reconstruct.count("=>") == 2
  assert "NLL" in evaluate and "KL" in evaluate and "active units" in evaluate
  assert proc.returncode != 0 and "at least 2 steps" in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.kernels
def test_export_and_every_signature_from_a_tensorflow_only_process(trained, ckpt_sample):
  tmp, workdir = trained
  export_dir = str(tmp / "export")
  version = os.path.join(export_dir, "1")
  # The checkpoint's sampler (read-only on the workdir; run already if the tools' test came
  # first) alongside the export; then the TensorFlow-only process alongside the SavedModel's
  # sampler.
  with ThreadPoolExecutor(1) as pool:
    ckpt = pool.submit(ckpt_sample)
    _run([PY, "scripts/export.py", f"--workdir={workdir}", f"--export_dir={export_dir}"])
    ckpt = ckpt.result()
  with ThreadPoolExecutor(1) as pool:
    from_saved = pool.submit(_run, [PY, "scripts/sample.py", "--num_sentences=3", "--seed=4",
                                    "--temperature=1", f"--saved_model={version}"])
    out, _ = _run([PY, "-c", ONLY_TF, version], env={**os.environ, "PYTHONPATH": ""})
    saved, _ = from_saved.result()
  r = json.loads(out.split("RESULT", 1)[1])
  assert r["signatures"] == ["decode", "encode", "interpolate", "sample", "score",
                             "serving_default"]
  score = r["score"]
  assert score["num_tokens"] == [4, 1, 4, 31]                # words + <eos>; cut to 30 words
  assert score["truncated"] == [False, False, False, True]
  assert all(a >= -1e-3 for a in score["kl"])
  assert all(nll <= -elbo + 1e-3 for nll, elbo in zip(score["iw_nll"], score["elbo"]))
  assert r["encode"]["mean"] == [4, 8] and r["encode"]["log_variance"] == [4, 8]
  assert r["encode_truncated"] == [False, False, False, True]
  assert len(r["decode"]) == 4
  assert r["bad_z"] and "z must be [batch, 8]" in r["bad_z"]
  assert r["sample"][0] == r["sample"][1] and r["sample"][0] != r["sample"][2]
  assert r["interpolate"] == {"text": [4], "z": [4, 8]}
  for name in ("serving_default", "score", "encode"):
    assert r["empty_batch"][name] and all(shape[0] == 0 for shape in r["empty_batch"][name].values()), name
  assert set(r["empty_batch"]["score"]) == set(score)
  assert r["empty_decode"] == [0]
  assert r["empty_sample"] == {"text": [0], "z": [0, 8]}
  assert r["interpolate_0"] and "steps" in r["interpolate_0"]
  # The checkpoint's sampler gives the SavedModel's sentences for the same seed.
  assert saved == ckpt


@pytest.mark.parametrize("backend", ["mirrored", "sync_backup", "async_ps"])
def test_vae_trains_under_the_distributed_backends(backend, text_corpus_dir):
  """The same loop under data parallelism (2 logical CPUs) and backup workers (1 ps, N=1 of 2
  workers) and asynchronous SGD (2 workers): whole-sentence batches split by rows, the KL weight
  from the step the gradient is computed for. On the small text corpus of conftest.py: every
  task would spend seconds reading PTB, and the chief evaluating on all of its test set."""
  workdir = str(text_corpus_dir / "run")
  train = ["scripts/train.py", "--config=configs/ptb_vae.py:smoke", f"--workdir={workdir}",
           "--config.train.num_steps=6", f"--config.distribute.backend={backend}",
           "--config.data.corpus=text",
           *(f"--config.data.{split}_path={text_corpus_dir / split}.txt"
             for split in ("train", "valid", "test"))]
  if backend == "mirrored":
    cmd = [PY, *train, "--config.distribute.num_logical_cpus=2"]
  elif backend == "sync_backup":
    cmd = [PY, "scripts/launch_local.py", "--num_ps=1", "--num_workers=2", "--", *train,
           "--config.distribute.replicas_to_aggregate=1", "--config.distribute.total_num_replicas=2"]
  else:
    cmd = [PY, "scripts/launch_local.py", "--num_ps=1", "--num_workers=2", "--", *train]
  _run(cmd)
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  assert r["step"] == 6 and r["test_nll"] > 0
  assert r["test_kl"] >= -1e-4   # a KL near 0 can come out a rounding error below it
