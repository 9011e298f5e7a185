"""Scoring speed of an exported language model's `serving_default`, loaded from the SavedModel.

  python bench/serving.py --saved_model=E/<version> [--requests=300]
  python bench/serving.py --workdir=W        # exports W's newest checkpoint to a temp dir first

Requests are PTB test sentences (the bundled corpus) in order, scored at batch 1 and at batch
64 after a few warm-up calls; latency is per request, wall clock in this process. Run it on a
quiet machine: it prints the background CPU load it started with. The last line is one JSON
object: sentences_per_sec_b1, sentences_per_sec_b64, p50_ms_b1, p99_ms_b1 (and the same for
b64, and the mean words per sentence).
"""
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from bench.common import background_busy  # noqa: E402

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "an exported version directory")
_WORKDIR = flags.DEFINE_string("workdir", None, "or a workdir to export first")
_REQUESTS = flags.DEFINE_integer("requests", 300, "timed requests per batch size")
WARMUP = 5


def _latencies(score, sentences, batch, requests):
  import tensorflow as tf
  batches = [sentences[(k * batch) % len(sentences):][:batch] for k in range(requests + WARMUP)]
  batches = [b if len(b) == batch else sentences[:batch] for b in batches]
  times = []
  for k, b in enumerate(batches):
    t0 = time.perf_counter()
    score(sentences=tf.constant(b))["log_prob"].numpy()
    if k >= WARMUP:
      times.append(time.perf_counter() - t0)
  return np.array(times)


def main(argv):
  del argv
  import tensorflow as tf
  from tfsys.data import PennTreebank
  from tfsys.serving import export, load_signatures
  if bool(_SAVED_MODEL.value) == bool(_WORKDIR.value):
    raise SystemExit("give exactly one of --saved_model and --workdir")
  busy = background_busy()
  print(f"background CPU load before the run: {busy:.0%} (figures are skewed if not ~0%)")
  with tempfile.TemporaryDirectory() as tmp:
    path = _SAVED_MODEL.value or export(_WORKDIR.value, tmp)[0]
    score = load_signatures(path)["serving_default"]
    sentences = [" ".join(s) for s in PennTreebank().sentences("test")]
    print(f"{path}: {len(sentences)} PTB test sentences, "
          f"{np.mean([len(s.split()) for s in sentences]):.1f} words each on average; "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} intra-op threads")
    result = {}
    for batch in (1, 64):
      requests = _REQUESTS.value if batch == 1 else max(_REQUESTS.value // 10, 10)
      t = _latencies(score, sentences, batch, requests)
      rate = batch * len(t) / t.sum()
      p50, p99 = np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3
      print(f"batch {batch:>2}: {rate:8.1f} sentences/s, latency p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(t)} requests)")
      result.update({f"sentences_per_sec_b{batch}": round(rate, 1),
                     f"p50_ms_b{batch}": round(p50, 2), f"p99_ms_b{batch}": round(p99, 2)})
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
