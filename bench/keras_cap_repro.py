"""Keras 3 `model.fit` on the PTB word LSTM: per-step times, and how long fit() takes to return
after its last step (the "204.8 ms per step" mode of bench/lm_throughput.py).

  python bench/keras_cap_repro.py --feed=generator --repeats=10 --steps=15 [--noautotune]

Builds the same keras.Sequential as bench/lm_throughput.py (random token ids of a 10k
vocabulary, batch 20 x 35: the speed does not depend on the text) and fits it REPEATS times
in one process, each fit STEPS steps, timing every step in the main thread
(on_train_batch_begin to on_train_batch_begin) and the time from on_train_end to fit()'s return.

What it showed (2-core AMD EPYC, TF 2.21, 15-step fits): the steps never sit at 204.8 ms;
fit() itself returns late, when deleting its tf.data iterator waits for the autotune thread's
next wake-up (see bench/tfdata_iterator_wait.py), 10 ms x (2^k - 1) after the first element:
5 of 10 fits with the generator feed and 8 of 10 with numpy arrays returned 0.5-4.8 s late, each
at 5.1 s or 10.2 s after step 1 began; with `--noautotune` (generator feed) 0 of 10. 200-step
fits returned at 40.95 s after step 1 in 2 of 3: 3,415 words/s over the fit() call, 5,933 and
6,488 over the steps. `--dump_after_end="py-spy dump --native --pid {pid}"` shows the main
thread in RootDataset::Iterator::~Iterator, joining that thread (gdb: Model::OptimizeLoop, in a
timed CondVar wait). The last line is one JSON object.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

_FEED = flags.DEFINE_enum("feed", "generator", ["generator", "slices", "arrays"],
                          "generator: from_generator + prefetch(2); slices: from_tensor_slices "
                          "+ batch + prefetch(AUTOTUNE); arrays: numpy arrays to fit()")
_STEPS = flags.DEFINE_integer("steps", 100, "timed steps per fit")
_REPEATS = flags.DEFINE_integer("repeats", 3, "fits in this process")
_WARM = flags.DEFINE_integer("warm", 20, "untimed steps before the timed fits")
_AUTOTUNE = flags.DEFINE_bool("autotune", True, "tf.data autotuning (generator, slices feeds)")
_DUMP_AFTER_END = flags.DEFINE_string(
    "dump_after_end", "", "shell command run 1 s after on_train_end if fit() has not returned, "
    "{pid} = ours (e.g. \"py-spy dump --native --pid {pid}\")")

CAP_SECS = 0.2048
PERIOD_MIN_S = 0.010   # tf.data Model::kOptimizationPeriodMinMs


def step_clock():
  """bench.keras_lm's StepClock, which can also run --dump_after_end after on_train_end."""
  from bench.keras_lm import StepClock

  class DumpingClock(StepClock):
    timer = None

    def on_train_end(self, logs=None):
      super().on_train_end(logs)
      if _DUMP_AFTER_END.value:
        import subprocess
        import threading
        self.timer = threading.Timer(1.0, lambda: subprocess.run(
            _DUMP_AFTER_END.value.format(pid=os.getpid()), shell=True))
        self.timer.start()
  return DumpingClock()


def main(argv):
  del argv
  import tensorflow as tf
  b, t, vocab = 20, 35, 10_000
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, size=(b * t * 400 + 1,), dtype=np.int32)
  x = ids[:-1].reshape(-1, b, t)
  y = ids[1:].reshape(-1, b, t)

  def dataset():
    if _FEED.value == "generator":
      def gen():
        i = 0
        while True:
          yield x[i % len(x)], y[i % len(y)]
          i += 1
      ds = tf.data.Dataset.from_generator(
          gen, output_signature=(tf.TensorSpec([b, t], tf.int32),) * 2).prefetch(2)
    else:
      ds = tf.data.Dataset.from_tensor_slices(
          (x.reshape(-1, t), y.reshape(-1, t))).batch(b, drop_remainder=True).repeat().prefetch(
              tf.data.AUTOTUNE)
    if not _AUTOTUNE.value:
      options = tf.data.Options()
      options.autotune.enabled = False
      ds = ds.with_options(options)
    return ds

  def fit(model, steps, cb=None):
    kw = dict(epochs=1, verbose=0, callbacks=[cb] if cb else None)
    if _FEED.value == "arrays":
      n = steps * b
      return model.fit(x.reshape(-1, t)[:n], y.reshape(-1, t)[:n], batch_size=b, shuffle=False,
                       **kw)
    return model.fit(dataset(), steps_per_epoch=steps, **kw)

  from bench.keras_lm import keras_model
  from configs import ptb_word_lstm
  model = keras_model(ptb_word_lstm.get_config(), 10_000)
  fit(model, _WARM.value)
  runs = []
  for r in range(_REPEATS.value):
    clock = step_clock()
    start = time.perf_counter()
    fit(model, _STEPS.value, clock)
    wall = time.perf_counter() - start
    if clock.timer:
      clock.timer.cancel()
    first, last = clock.stamps[0], clock.stamps[-1]
    s = np.diff(clock.stamps[1:])           # the first step includes starting the pipeline
    after_end = start + wall - last
    # The autotune thread starts with the first element, just before step 1 begins.
    since_first = start + wall - first
    wakes = PERIOD_MIN_S * (2.0 ** np.arange(1, 40) - 1)
    nearest = float(wakes[np.argmin(np.abs(wakes - since_first))])
    run = {"words_per_sec_fit_call": round(_STEPS.value * b * t / wall, 1),
           "words_per_sec_steps": round(_STEPS.value * b * t / (last - first), 1),
           "median_step_ms": round(float(np.median(s)) * 1e3, 2),
           "frac_steps_at_204.8ms": round(float(np.mean(np.abs(s - CAP_SECS) <= 0.002)), 3),
           "after_end_s": round(after_end, 3), "return_since_step1_s": round(since_first, 3),
           "nearest_wake_s": nearest, "wall_s": round(wall, 2)}
    runs.append(run)
    print(f"fit {r}: {run['words_per_sec_fit_call']:.0f} words/s over the fit() call, "
          f"{run['words_per_sec_steps']:.0f} over its steps; step median {run['median_step_ms']} "
          f"ms, at 204.8 ms: {run['frac_steps_at_204.8ms']:.0%}; fit() returned "
          f"{after_end:.3f} s after on_train_end, {since_first:.3f} s after step 1 began "
          f"(nearest autotune wake-up {nearest:.2f} s)", flush=True)
  late = sum(r["after_end_s"] > 0.05 for r in runs)
  print(f"{late} of {len(runs)} fits returned > 50 ms after their last step")
  print(json.dumps({"feed": _FEED.value, "autotune": _AUTOTUNE.value, "late_returns": late,
                    "runs": runs}))


if __name__ == "__main__":
  app.run(main)
