"""Words/s of our training loop against Keras 3 `model.fit` on the same word-level LSTM LM.

  python bench/lm_throughput.py [--steps=200] [--steps_per_loop=K]

Both train configs/ptb_word_lstm.py's model (PTB: 10k vocabulary, word embeddings 200, two
LSTM layers of 200, dropout 0.5, full softmax, SGD, gradient norm clipped to 5, batch 20 x 35)
on the same PTB windows. Ours runs through `tfsys.train.train_and_evaluate` itself (state
carried across batches); Keras runs an equivalent `keras.Sequential` with `fit` (stateless
LSTMs, which do slightly less work) fed the way a Keras user feeds it: numpy arrays,
`batch_size=20, shuffle=False`. The machine's matmul peak is measured in the same run, and the
model-FLOPs utilisation (MFU) is our matmul FLOPs per second (forward + backward = 3x forward)
over that peak. Each contender runs in a fresh child process (`--contender=ours` or `keras`
measures one and prints its JSON line). Ours runs three times: with train.steps_per_loop = K
(the config's default unless --steps_per_loop says otherwise), with 1 step per call, and with
K and train.precision=bfloat16 (mixed precision); the bf16 MFU is against the bf16 matmul peak
measured in the same run. `ours_words_per_sec` and `ratio` are the README's recommendation for
the CPU at hand: bf16 where it multiplies bf16 natively (AVX512-BF16, AMX), else float32.

Both contenders' words/s count their training steps only (ours: from its first progress line
on; Keras: from the first on_train_batch_begin to on_train_end), and the bench times every step.
Until 2026-12 the Keras figure was taken over the whole `fit()` call, and it came out either
~6,000 words/s or exactly 3,418 (= 200 x 700 words / 40.95 s, "0.2048 s per step"). The steps
were never slow: `fit()` deletes its tf.data iterator when it returns, and about half the time
that deletion waits for tf.data's autotune thread to wake, which it does 10 ms x (2^k - 1)
after the first element (10.23, 20.47, 40.95 s...): a lost wake-up, see
bench/tfdata_iterator_wait.py. So the bench prints, for each contender, how long it took to
return after its last step, and the share of steps within 2 ms of 204.8 ms. The last line is
one JSON object.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import background_busy  # noqa: E402
from bench.keras_lm import StepClock, keras_model  # noqa: E402
from configs import ptb_word_lstm  # noqa: E402
from tfsys.data import ArrayStream, PennTreebank, load_vocabulary  # noqa: E402
from tfsys.train import controller, precision, train_and_evaluate  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 200, "timed training steps per contender")
_KERAS_FEED = flags.DEFINE_enum(
    "keras_feed", "arrays", ["arrays", "generator"],
    "arrays: numpy arrays to fit() (what a Keras user writes); generator: from_generator + "
    "prefetch(2) over our stream, the old bench's feed")
_STEPS_PER_LOOP = flags.DEFINE_integer(
    "steps_per_loop", None, "our train.steps_per_loop (default: the config's); ours also runs "
    "with 1 for comparison")
_PRECISION = flags.DEFINE_enum(
    "precision", "float32", ["float32", "bfloat16"], "ours: train.precision (internal: the "
    "comparison runs ours in both)")
_CONTENDER = flags.DEFINE_enum(
    "contender", "both", ["both", "ours", "keras"],
    "both: each of the two in a fresh child process, then the comparison; ours, keras: measure "
    "that one here and print its JSON line")

WARMUP_STEPS = 20     # tracing and the first steps: not timed
CAP_SECS = 0.2048     # the "per-step" time the old bench reported in its slow mode
CAP_TOLERANCE = 0.002
LATE_SECS = 0.05      # a return later than this after the last step is the autotune wait


def step_stats(step_secs, returned_after_s: float) -> dict:
  """Median and spread of per-step times, the share of steps at 204.8 ms, and how long the
  contender took to return after its training ended (ours: Controller.finish; Keras:
  on_train_end)."""
  s = np.asarray(step_secs, np.float64)
  at_cap = float(np.mean(np.abs(s - CAP_SECS) <= CAP_TOLERANCE)) if len(s) else 0.0
  return {"median_ms": round(float(np.median(s)) * 1e3, 2),
          "p10_ms": round(float(np.percentile(s, 10)) * 1e3, 2),
          "p90_ms": round(float(np.percentile(s, 90)) * 1e3, 2),
          "frac_at_cap": round(at_cap, 3), "steps": len(s),
          "returned_after_s": round(returned_after_s, 3)}


class OthersLoad:
  """Share of the machine's CPU that other processes used while a contender ran: the load line
  printed before measuring says nothing about what started later."""

  def __enter__(self):
    self._machine, self._ours, self._t = self._machine_busy(), self._ours_cpu(), time.time()
    return self

  def __exit__(self, *exc):
    others = (self._machine_busy() - self._machine) - (self._ours_cpu() - self._ours)
    self.share = max(0.0, others) / max(1e-9, (time.time() - self._t) * os.cpu_count())

  @staticmethod
  def _machine_busy() -> float:
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

  @staticmethod
  def _ours_cpu() -> float:
    t = os.times()
    return t.user + t.system


def matmul_peak_flops(n=2048, repeats=8, dtype=tf.float32) -> float:
  """Best FLOP/s of n x n matmuls in a tf.function (DESIGN.md §8 measured ~400 GFLOP/s fp32)."""
  a = tf.cast(tf.random.normal([n, n]), dtype)
  b = tf.cast(tf.random.normal([n, n]), dtype)

  @tf.function
  def f():
    acc = tf.zeros([n, n], dtype)
    for i in range(repeats):
      acc += tf.matmul(a + float(i), b)
    return acc
  f().numpy()
  best = float("inf")
  for _ in range(5):
    t = time.perf_counter()
    f().numpy()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 * repeats / best


def model_flops_per_word(model_config, vocab_size: int) -> float:
  """Matmul FLOPs per word, forward + backward (3x forward): LSTM layers and the softmax."""
  fwd, dim = 0, model_config.word_dim
  for _ in range(model_config.num_layers):
    fwd += 2 * (dim + model_config.lstm_units) * 4 * model_config.lstm_units
    dim = model_config.lstm_units
  fwd += 2 * dim * vocab_size
  return 3.0 * fwd


_Throughput, _finish = controller.Throughput, controller.Controller.finish


class _TimedThroughput(_Throughput):
  """The controller's own meter, plus a clock read at every call: the controller calls add()
  once per call of the executor, once it has read the call's losses back (the call is done)."""
  stamps: list = []   # (time, words) per call

  def add(self, words):
    _TimedThroughput.stamps.append((time.perf_counter(), words))
    super().add(words)


def _timed_finish(self, *args, **kwargs):
  """Controller.finish, stamped when it returns: after it, only the data iterator is dropped."""
  out = _finish(self, *args, **kwargs)
  _TimedThroughput.stamps.append((time.perf_counter(), 0))
  return out


def ours(config, steps: int, steps_per_loop: int | None) -> tuple[float, list, float]:
  """Words/s as the loop reports it, per-step seconds (a call's time over its steps), and the
  seconds train_and_evaluate took to return after Controller.finish (its iterator's deletion)."""
  if steps_per_loop:
    config.train.steps_per_loop = steps_per_loop
  config.train.precision = _PRECISION.value
  config.train.num_steps = steps + WARMUP_STEPS
  config.train.log_every = WARMUP_STEPS  # words/s counts from the first progress line on
  config.train.checkpoint_every = 10 ** 9
  config.train.histogram_every = 10 ** 9
  config.eval.every_steps = 10 ** 9
  config.eval.max_tokens = 100
  config.eval.num_samples = 0
  _TimedThroughput.stamps = []
  # Reading the loop's clocks from outside it: the bench measures, the library stays clean.
  controller.Throughput, controller.Controller.finish = _TimedThroughput, _timed_finish
  try:
    with tempfile.TemporaryDirectory() as workdir:
      words_per_sec = train_and_evaluate(config, workdir)["words_per_sec"]
      returned = time.perf_counter()
  finally:
    controller.Throughput, controller.Controller.finish = _Throughput, _finish
  stamps = _TimedThroughput.stamps
  words_per_step = config.train.batch_size * config.train.unroll
  step_secs, done = [], 0
  for (t0, _), (t1, words) in zip(stamps[:-2], stamps[1:-1]):
    done += words
    if done > WARMUP_STEPS * words_per_step:   # the timed steps: after the first progress line
      n = max(round(words / words_per_step), 1)
      step_secs += [(t1 - t0) / n] * n
  return words_per_sec, step_secs, returned - stamps[-1][0]


def keras_fit(config, steps: int, feed: str) -> tuple[float, float, list, float]:
  """Words/s over the steps and over the whole fit() call, per-step seconds, and the seconds
  fit() took to return after on_train_end."""
  t = config.train
  corpus = PennTreebank()
  vocab = load_vocabulary(config.data, corpus)
  stream = ArrayStream(corpus.token_ids("train", vocab), t.batch_size, t.unroll, vocab.eos_id)
  model = keras_model(config, len(vocab))
  clock = StepClock()
  if feed == "arrays":
    # Our windows 0..N-1 as rows of [N * batch, unroll] arrays: with shuffle=False, batch s of
    # fit() is exactly our window s, so both contenders read the same words.
    n = WARMUP_STEPS + steps
    windows = [w for _, w in zip(range(n), stream.windows(0))]
    x = np.concatenate([w["inputs"] for w in windows])
    y = np.concatenate([w["targets"] for w in windows])
    cut = WARMUP_STEPS * t.batch_size
    model.fit(x[:cut], y[:cut], batch_size=t.batch_size, shuffle=False, verbose=0)  # trace
    start = time.perf_counter()
    model.fit(x[cut:], y[cut:], batch_size=t.batch_size, shuffle=False, verbose=0,
              callbacks=[clock])
  else:
    ds = tf.data.Dataset.from_generator(
        lambda: ((w["inputs"], w["targets"]) for w in stream.windows(0)),
        output_signature=(tf.TensorSpec([t.batch_size, t.unroll], tf.int32),) * 2).prefetch(2)
    model.fit(ds, steps_per_epoch=WARMUP_STEPS, verbose=0)
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, verbose=0, callbacks=[clock])
  returned = time.perf_counter()
  words = steps * t.batch_size * t.unroll
  first, last = clock.stamps[0], clock.stamps[-1]
  # The first interval includes starting the epoch's pipeline: not counted as a step time.
  return (words / (last - first), words / (returned - start), np.diff(clock.stamps[1:]).tolist(),
          returned - last)


def report(name: str, stats: dict) -> None:
  print(f"  {name} steps: median {stats['median_ms']:.1f} ms (p10 {stats['p10_ms']:.1f}, "
        f"p90 {stats['p90_ms']:.1f}); within 2 ms of {CAP_SECS * 1e3:.1f} ms: "
        f"{stats['frac_at_cap']:.0%} of {stats['steps']}; returned "
        f"{stats['returned_after_s']:.2f} s after its training ended")
  if stats["frac_at_cap"] >= 0.5:
    print(f"  WARNING: most of {name}'s steps took {CAP_SECS * 1e3:.1f} ms: check whether that "
          f"is its speed or a wait")
  if stats["returned_after_s"] > LATE_SECS:
    print(f"  NOTE: {name} returned {stats['returned_after_s']:.2f} s late: deleting its tf.data "
          f"iterator waited for the autotune thread to wake (not counted in words/s)")


def measure(name: str, steps: int, feed: str, steps_per_loop: int | None = None) -> dict:
  """One contender, in this process."""
  config = ptb_word_lstm.get_config()
  with OthersLoad() as load:
    if name == "ours":
      words_per_sec, step_secs, late = ours(config, steps, steps_per_loop)
      fit_call_words_per_sec = None
    else:
      words_per_sec, fit_call_words_per_sec, step_secs, late = keras_fit(config, steps, feed)
  return {"words_per_sec": round(words_per_sec, 1),
          "fit_call_words_per_sec": fit_call_words_per_sec and round(fit_call_words_per_sec, 1),
          "steps": step_stats(step_secs, late), "others_cpu_share": round(load.share, 3)}


def in_fresh_process(name: str, steps_per_loop: int | None = None,
                     precision: str = "float32") -> dict:
  """measure() in a child process, so that neither contender runs on the other's leftovers
  (threads, allocator, compiled functions) and the order of the two does not matter."""
  cmd = [sys.executable, os.path.abspath(__file__), f"--contender={name}",
         f"--steps={_STEPS.value}", f"--keras_feed={_KERAS_FEED.value}",
         f"--precision={precision}"]
  if steps_per_loop:
    cmd.append(f"--steps_per_loop={steps_per_loop}")
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _CONTENDER.value != "both":
    print(json.dumps(measure(_CONTENDER.value, _STEPS.value, _KERAS_FEED.value,
                             _STEPS_PER_LOOP.value)))
    return
  busy = background_busy()
  print(f"background CPU load before measuring: {busy:.0%}"
        + ("  (not quiet: figures will be low)" if busy > 0.15 else ""))
  peak = matmul_peak_flops()
  peak16 = matmul_peak_flops(dtype=tf.bfloat16)
  native = precision.cpu_has_bf16()
  print(f"matmul peak (2048^2): fp32 {peak / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s "
        f"({'native' if native else 'no native'} bf16 on this CPU)")
  k = _STEPS_PER_LOOP.value or ptb_word_lstm.get_config().train.steps_per_loop
  ours_r = in_fresh_process("ours", k)
  print(f"ours (tfsys.train loop, {k} steps per call): {ours_r['words_per_sec']:.0f} words/s; "
        f"other processes' CPU while it ran: {ours_r['others_cpu_share']:.0%}")
  report("ours", ours_r["steps"])
  ours_1 = in_fresh_process("ours", 1)
  print(f"ours (1 step per call): {ours_1['words_per_sec']:.0f} words/s; other processes' "
        f"CPU while it ran: {ours_1['others_cpu_share']:.0%}")
  report("ours, 1 step per call", ours_1["steps"])
  ours_16 = in_fresh_process("ours", k, "bfloat16")
  print(f"ours, train.precision=bfloat16 ({k} steps per call): {ours_16['words_per_sec']:.0f} "
        f"words/s; other processes' CPU while it ran: {ours_16['others_cpu_share']:.0%}")
  report("ours, bfloat16", ours_16["steps"])
  keras_r = in_fresh_process("keras")
  print(f"keras 3 model.fit ({_KERAS_FEED.value}): {keras_r['words_per_sec']:.0f} words/s "
        f"({keras_r['fit_call_words_per_sec']:.0f} over the whole fit() call); other processes' "
        f"CPU while it ran: {keras_r['others_cpu_share']:.0%}")
  report("keras", keras_r["steps"])
  flops = model_flops_per_word(ptb_word_lstm.get_config().model, 10_000)
  mfu32 = ours_r["words_per_sec"] * flops / peak
  mfu16 = ours_16["words_per_sec"] * flops / peak16
  # The README's recommendation for this CPU: bf16 where it multiplies bf16 natively.
  best, mfu = (ours_16, mfu16) if native else (ours_r, mfu32)
  ratio = best["words_per_sec"] / keras_r["words_per_sec"]
  print(f"fp32: ratio ours / keras {ours_r['words_per_sec'] / keras_r['words_per_sec']:.2f}, "
        f"MFU {mfu32:.1%} of the fp32 peak; bf16: ratio "
        f"{ours_16['words_per_sec'] / keras_r['words_per_sec']:.2f}, MFU {mfu16:.1%} of the bf16 "
        f"peak; bf16 / fp32 {ours_16['words_per_sec'] / ours_r['words_per_sec']:.2f} "
        f"({flops / 1e6:.1f} MFLOP per word, fwd+bwd)")
  contenders = {"ours": ours_r, "ours_bf16": ours_16, "keras": keras_r}
  print(json.dumps({"ours_words_per_sec": best["words_per_sec"],
                    "recommended": "bfloat16" if native else "float32",
                    "fp32_words_per_sec": ours_r["words_per_sec"],
                    "bf16_words_per_sec": ours_16["words_per_sec"],
                    "fp32_ratio": round(ours_r["words_per_sec"] / keras_r["words_per_sec"], 3),
                    "fp32_mfu": round(mfu32, 4), "bf16_mfu": round(mfu16, 4),
                    "bf16_peak_gflops": round(peak16 / 1e9, 1), "steps_per_loop": k,
                    "ours_steps_per_loop_1_words_per_sec": ours_1["words_per_sec"],
                    "keras_fit_words_per_sec": keras_r["words_per_sec"],
                    "keras_fit_call_words_per_sec": keras_r["fit_call_words_per_sec"],
                    "ratio": round(ratio, 3), "mfu": round(mfu, 4),
                    "keras_feed": _KERAS_FEED.value,
                    "ours_steps": ours_r["steps"], "keras_steps": keras_r["steps"],
                    "steps_at_cap": {k: r["steps"]["frac_at_cap"] >= 0.5
                                     for k, r in contenders.items()},
                    "returned_late": {k: r["steps"]["returned_after_s"] > LATE_SECS
                                      for k, r in contenders.items()},
                    "peak_gflops": round(peak / 1e9, 1), "background_busy": round(busy, 3),
                    "others_cpu_share": {k: r["others_cpu_share"] for k, r in contenders.items()}}))


if __name__ == "__main__":
  app.run(main)
