"""Trains a model: python scripts/train.py --config=configs/X.py[:variant] --workdir=W [--config.a.b=v].

Running the same command again resumes from the newest checkpoint in W.
"""
from tfsys import cli  # first: sets TensorFlow's log level

import os
import shutil
import sys

from absl import flags
from ml_collections import config_flags

import models
from tfsys.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, TensorBoard logs")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  results = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if results is None:  # a parameter-server worker: the chief reports
    return
  print(f"\nvalidation perplexity {results['valid_perplexity']:.2f}, "
        f"test perplexity {results['test_perplexity']:.2f} after {results['step']} steps")
  summary = models.kind(_CONFIG.value.model).task_class().summary(results, prefix="test_")
  if summary:   # a sentence model: nats per sentence, and what z carries
    print(f"test {summary}")
  for k, s in enumerate(results["samples"]):
    print(f"sample {k + 1}: {s.replace(chr(10), ' / ')}")
  if _CONFIG.value.reference:
    print(f"\nFor scale: {_CONFIG.value.reference}")
  print(f"\nTensorBoard: tensorboard --logdir {_WORKDIR.value} --host 127.0.0.1 --port 6006")
  beside = os.path.join(os.path.dirname(sys.executable), "tensorboard")
  if not shutil.which("tensorboard") and os.path.exists(beside):
    print(f"  (tensorboard is not on PATH: it is {os.path.relpath(beside)})")
  print("  then open http://127.0.0.1:6006: Time Series or Scalars for train/loss, "
        "eval/perplexity, perf/words_per_sec; Text for eval/samples; Graphs for train_step")


if __name__ == "__main__":
  cli.run(main)
