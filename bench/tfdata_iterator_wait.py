"""How long deleting a tf.data iterator takes, and whether it waits for the autotune thread.

  python bench/tfdata_iterator_wait.py [--feed=generator|slices|ours] [--busy] [--noautotune]

Each trial makes an iterator, takes one element every 20 ms for CONSUME_S seconds, deletes the
iterator and times the deletion. No Keras involved. --busy keeps the cores busy with matmuls in
another thread meanwhile, as training does; --feed=ours reads tfsys's own stream (PTB windows,
from_generator + prefetch(2)) through the default strategy's `distribute_datasets_from_function`,
as tfsys/train/allreduce.py does.

Why: with autotuning on (tf.data's default), the first GetNext starts a `tf_data_model` thread
(Model::OptimizeLoop) that sleeps on a condition variable between optimisation rounds, the gap
doubling from 10 ms to 60 s, so it wakes about 10 ms x (2^k - 1) after the first element: 1.27,
2.55, 5.11, 10.23, 20.47, 40.95 s. Deleting the iterator (RootDataset::Iterator::~Iterator)
cancels that thread and joins it. The cancellation callback notifies the condition variable
before the CancellationManager marks itself cancelled (tsl CancellationManager::
StartCancelWithStatus runs the callbacks first, then sets is_cancelled_), so a thread that wakes
at once still reads "not cancelled" and sleeps out the rest of its period: the deletion then ends
on one of those wake-up times. A Keras `fit` deletes its iterator as it returns, so its wall time
is rounded up to the next wake-up: 200 steps of ~117 ms end at 40.95 s, and 200 x 700 words /
40.95 s = 3,418 words/s, the "0.2048 s per step" of the old bench/lm_throughput.py.

Measured here (2-core AMD EPYC, TF 2.21, 1.5 s reads, 10 trials each): generator idle 0, slices
idle 1, generator --busy 3, ours --busy 5 deletions waited (each to 2.55 s); with --noautotune,
generator --busy 0 and ours --busy 0. The last line is one JSON object.
"""
import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

_FEED = flags.DEFINE_enum("feed", "generator", ["generator", "slices", "ours"], "the dataset")
_AUTOTUNE = flags.DEFINE_bool("autotune", True, "tf.data.Options().autotune.enabled")
_TRIALS = flags.DEFINE_integer("trials", 12, "iterators made and deleted")
_CONSUME = flags.DEFINE_float("consume_s", 1.5, "seconds each iterator is read before deletion")
_BUSY = flags.DEFINE_bool("busy", False, "keep the cores busy with matmuls in another thread, "
                          "as a training step does, while reading and deleting")

PERIOD_MIN_S = 0.010   # tf.data Model::kOptimizationPeriodMinMs


def wake_times(horizon_s: float) -> np.ndarray:
  """When the autotune thread wakes, from its start, ignoring the rounds' own run time."""
  k = np.arange(1, 40)
  t = PERIOD_MIN_S * (2.0 ** k - 1)
  return t[t < horizon_s + 60]


def main(argv):
  del argv
  import tensorflow as tf
  x = np.zeros([100, 20, 35], np.int32)

  def dataset():
    if _FEED.value == "generator":
      def gen():
        i = 0
        while True:
          yield x[i % 100]
          i += 1
      ds = tf.data.Dataset.from_generator(
          gen, output_signature=tf.TensorSpec([20, 35], tf.int32)).prefetch(2)
    elif _FEED.value == "slices":
      ds = tf.data.Dataset.from_tensor_slices(x).repeat().prefetch(tf.data.AUTOTUNE)
    else:
      from configs import ptb_word_lstm
      from tfsys.data import ArrayStream, PennTreebank, load_vocabulary
      config = ptb_word_lstm.get_config()
      corpus = PennTreebank()
      vocab = load_vocabulary(config.data, corpus, save=False)
      stream = ArrayStream(corpus.token_ids("train", vocab), 20, 35, vocab.eos_id)
      strategy = tf.distribute.get_strategy()
      make = lambda ctx: stream.dataset(0, ctx)  # noqa: E731
      if not _AUTOTUNE.value:
        make = lambda ctx: stream.dataset(0, ctx).with_options(options())  # noqa: E731
      return strategy.distribute_datasets_from_function(make)
    if not _AUTOTUNE.value:
      ds = ds.with_options(options())
    return ds

  def options():
    o = tf.data.Options()
    o.autotune.enabled = False
    return o

  a = tf.random.normal([512, 512])
  matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, a)))
  matmul()
  stop = threading.Event()

  def burn():
    while not stop.is_set():
      matmul().numpy()

  rows = []
  for trial in range(_TRIALS.value):
    stop.clear()
    burner = threading.Thread(target=burn) if _BUSY.value else None
    if burner:
      burner.start()
    ds = dataset()
    it = iter(ds)
    start = time.perf_counter()   # the first GetNext starts the autotune thread
    next(it)
    while time.perf_counter() - start < _CONSUME.value:
      time.sleep(0.02)
      next(it)
    consumed = time.perf_counter() - start
    del it
    deleted = time.perf_counter() - start
    stop.set()
    if burner:
      burner.join()
    wakes = wake_times(deleted)
    nearest = float(wakes[np.argmin(np.abs(wakes - deleted))])
    rows.append({"consume_s": round(consumed, 3), "delete_s": round(deleted - consumed, 3),
                 "ends_at_s": round(deleted, 3), "nearest_wake_s": nearest})
    print(f"trial {trial}: read {consumed:.3f} s; deleting the iterator took "
          f"{deleted - consumed:.3f} s, ending {deleted:.3f} s after the first element "
          f"(nearest autotune wake-up {nearest:.2f} s)", flush=True)
  stalled = [r for r in rows if r["delete_s"] > 0.05]
  print(f"{len(stalled)} of {len(rows)} deletions waited > 50 ms")
  print(json.dumps({"feed": _FEED.value, "autotune": _AUTOTUNE.value,
                    "consume_s": _CONSUME.value, "stalled": len(stalled), "trials": len(rows),
                    "rows": rows}))


if __name__ == "__main__":
  app.run(main)
