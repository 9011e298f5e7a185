"""Peak memory of one scoring request to an exported language model, by batch size.

  python bench/serving_memory.py                       # trains and exports a :smoke model first
  python bench/serving_memory.py --saved_model=E/<version> [--batches=1000,5000,20000]
  python bench/serving_memory.py --workdir=W [--score_rows=256]   # exports W first

Each batch size is measured in a fresh process that imports only TensorFlow, loads the
SavedModel, scores one sentence (tracing, the tables) and then one request of that many PTB
test sentences (the bundled corpus, cycled) through `serving_default`. The figure is the
process's peak resident memory (VmHWM in /proc/self/status), so each process measures one
request only. `loaded_mb` is the peak before the big request: what the model and TensorFlow
cost whatever the batch. The last line is one JSON object: {"score_rows", "loaded_mb",
"peak_mb": {batch: MB}, "growth_mb": {batch: MB above loaded_mb},
"failed": {batch: exit status of a scoring process that died}}.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "an exported version directory")
_WORKDIR = flags.DEFINE_string("workdir", None, "or a workdir to export first")
_SCORE_ROWS = flags.DEFINE_integer("score_rows", None, "with --workdir or no model: export with "
                                   "this many rows per scoring slice (default: export's own)")
_BATCHES = flags.DEFINE_list("batches", ["1000", "5000", "20000"], "request sizes, sentences")

# Runs in a fresh interpreter: argv = saved_model, sentences file, batch size.
CHILD = r"""
import json, sys
import tensorflow as tf

def peak_mb():
  with open("/proc/self/status") as f:
    kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
  return kb / 1024

path, text, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
score = tf.saved_model.load(path).signatures["serving_default"]
with open(text, encoding="utf-8") as f:
  pool = f.read().splitlines()
score(sentences=tf.constant(pool[:1]))
loaded = peak_mb()
request = [pool[k % len(pool)] for k in range(batch)]
out = score(sentences=tf.constant(request))
assert out["log_prob"].shape[0] == batch
print("RESULT" + json.dumps({"loaded_mb": loaded, "peak_mb": peak_mb(),
                             "num_tokens": int(tf.reduce_sum(out["num_tokens"]))}))
"""


def _check(cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd[:2])} ... failed with status {proc.returncode}:\n"
                     f"{(proc.stdout + proc.stderr)[-3000:]}")
  return proc.stdout


def _smoke_workdir(tmp: str) -> str:
  """A :smoke char-CNN LSTM (2,000-word vocabulary) trained for 10 steps: memory, not quality."""
  workdir = os.path.join(tmp, "run")
  _check([sys.executable, "scripts/train.py", "--config=configs/ptb_char_cnn_lstm.py:smoke",
          f"--workdir={workdir}", "--config.train.num_steps=10", "--config.eval.max_tokens=200"])
  return workdir


def main(argv):
  del argv
  from tfsys.data import PennTreebank
  if _SAVED_MODEL.value and _WORKDIR.value:
    raise SystemExit("give at most one of --saved_model and --workdir")
  with tempfile.TemporaryDirectory() as tmp:
    path, rows = _SAVED_MODEL.value, None   # a given SavedModel's slice size is not known here
    if not path:
      from tfsys import serving as exporting
      workdir = _WORKDIR.value or _smoke_workdir(tmp)
      kw = {} if _SCORE_ROWS.value is None else {"score_rows": _SCORE_ROWS.value}
      path = exporting.export(workdir, os.path.join(tmp, "export"), **kw)[0]
      rows = _SCORE_ROWS.value or getattr(exporting, "SCORE_ROWS", None)
    text = os.path.join(tmp, "sentences.txt")
    with open(text, "w", encoding="utf-8") as f:
      f.write("".join(" ".join(s) + "\n" for s in PennTreebank().sentences("test")))
    result = {"score_rows": rows, "loaded_mb": 0.0, "peak_mb": {},
              "growth_mb": {}, "failed": {}}
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    for batch in _BATCHES.value:
      proc = subprocess.run([sys.executable, "-c", CHILD, path, text, batch], env=env,
                            capture_output=True, text=True, cwd=ROOT)
      if proc.returncode:
        # A negative status is the signal that ended it (-9: the OOM killer, -11: a crash).
        result["failed"][batch] = proc.returncode
        print(f"batch {int(batch):>6}: the scoring process failed with status "
              f"{proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        continue
      got = json.loads(proc.stdout.split("RESULT", 1)[1])
      result["loaded_mb"] = max(result["loaded_mb"], round(got["loaded_mb"], 1))
      result["peak_mb"][batch] = round(got["peak_mb"], 1)
      result["growth_mb"][batch] = round(got["peak_mb"] - got["loaded_mb"], 1)
      print(f"batch {int(batch):>6}: peak {got['peak_mb']:7.1f} MB "
            f"({got['peak_mb'] - got['loaded_mb']:+7.1f} MB over the loaded model's "
            f"{got['loaded_mb']:.1f} MB; {got['num_tokens']} tokens)", flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
