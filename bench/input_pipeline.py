"""How much of a training step the input pipeline could take: its cost per batch next to a step.

  python bench/input_pipeline.py [--steps=30]

The training stream (tfsys/data/pipeline.py: a Python generator of numpy windows through
`tf.data.Dataset.from_generator`, prefetch 2) of configs/ptb_word_lstm.py's batch (20 x 35) over
a PTB-sized token array, timed three ways: the generator alone; the dataset pulled from Python;
the dataset pulled inside a tf.function (as the all-reduce executor's loop pulls it). Next to
them, the median training step of the same config's model (forward, backward, SGD update) in
float32 and bf16 (train.precision; bench/common.py's model_step_ms), so that the share is measured, not assumed. With prefetch
the producer runs beside the step, so the share is an upper bound on the wait. The last line is
one JSON object.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import ptb_word_lstm  # noqa: E402
from tfsys.data.pipeline import ArrayStream  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 30, "timed training steps per precision")
PTB_TRAIN_TOKENS = 929_589
VOCAB = 10_000


def per_call_ms(fn, n: int) -> float:
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n * 1e3


def stream_ms(n: int = 1000) -> dict:
  c = ptb_word_lstm.get_config()
  ids = np.random.default_rng(0).integers(0, VOCAB, PTB_TRAIN_TOKENS).astype(np.int32)
  stream = ArrayStream(ids, c.train.batch_size, c.train.unroll, eos_id=0)
  windows = stream.windows(0)
  generator = per_call_ms(lambda: next(windows), n)
  it = iter(stream.dataset(0))
  for _ in range(20):
    next(it)
  from_python = per_call_ms(lambda: next(it), n)
  it2 = iter(stream.dataset(0))

  @tf.function
  def pull(it, k):
    acc = tf.constant(0)
    for _ in tf.range(k):
      acc += tf.reduce_sum(next(it)["inputs"][:1, :1])
    return acc
  pull(it2, tf.constant(20)).numpy()
  in_function = per_call_ms(lambda: pull(it2, tf.constant(n)).numpy(), 1) / n
  return {"generator_ms": generator, "dataset_ms": from_python, "dataset_in_function_ms": in_function}


def main(argv):
  del argv
  from bench.common import background_busy, model_step_ms
  print(f"machine busy with other work: {100 * background_busy():.0f}%")
  feed = stream_ms()
  steps = {p: model_step_ms(ptb_word_lstm.get_config(), p, steps=_STEPS.value)
           for p in ("float32", "bfloat16")}
  worst = max(feed["dataset_ms"], feed["dataset_in_function_ms"])
  print(f"a batch: generator {feed['generator_ms']:.4f} ms, tf.data from Python "
        f"{feed['dataset_ms']:.3f} ms, pulled in a tf.function {feed['dataset_in_function_ms']:.3f} ms")
  for name, ms in steps.items():
    print(f"a {name} step {ms:.1f} ms: the input pipeline is at most {100 * worst / ms:.2f}% of it")
  print(json.dumps({**{k: round(v, 4) for k, v in feed.items()},
                    "step_ms": {k: round(v, 1) for k, v in steps.items()},
                    "max_share": {k: round(worst / v, 4) for k, v in steps.items()}}))


if __name__ == "__main__":
  app.run(main)
