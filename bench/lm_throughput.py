"""Words/s of our training loop against Keras 3 `model.fit` on the same word-level LSTM LM.

  python bench/lm_throughput.py [--steps=200]

Both train configs/ptb_word_lstm.py's model (PTB: 10k vocabulary, word embeddings 200, two
LSTM layers of 200, dropout 0.5, full softmax, SGD, gradient norm clipped to 5, batch 20 x 35)
on the same PTB windows. Ours runs through `tfsys.train.train_and_evaluate` itself (state
carried across batches); Keras runs an equivalent `keras.Sequential` with `fit` (stateless
LSTMs, which do slightly less work). The machine's matmul peak is measured in the same run,
and the model-FLOPs utilisation (MFU) is our matmul FLOPs per second (forward + backward =
3x forward) over that peak. The last line is one JSON object.
"""
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import background_busy  # noqa: E402
from configs import ptb_word_lstm  # noqa: E402
from tfsys.data import ArrayStream, PennTreebank, load_vocabulary  # noqa: E402
from tfsys.train import train_and_evaluate  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 200, "timed training steps per contender")


def matmul_peak_flops(n=2048, repeats=8) -> float:
  """Best fp32 FLOP/s of n x n matmuls in a tf.function (DESIGN.md §8 measured ~400 GFLOP/s)."""
  a = tf.random.normal([n, n])
  b = tf.random.normal([n, n])

  @tf.function
  def f():
    acc = tf.zeros([n, n])
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


def ours(config, steps: int) -> float:
  config.train.num_steps = steps + 20
  config.train.log_every = 20            # the first 20 steps (tracing) are not timed
  config.train.checkpoint_every = 10 ** 9
  config.train.histogram_every = 10 ** 9
  config.eval.every_steps = 10 ** 9
  config.eval.max_tokens = 100
  config.eval.num_samples = 0
  with tempfile.TemporaryDirectory() as workdir:
    return train_and_evaluate(config, workdir)["words_per_sec"]


def keras_fit(config, steps: int) -> float:
  m, t = config.model, config.train
  corpus = PennTreebank()
  vocab = load_vocabulary(config.data, corpus)
  stream = ArrayStream(corpus.token_ids("train", vocab), t.batch_size, t.unroll, vocab.eos_id)
  ds = tf.data.Dataset.from_generator(
      lambda: ((w["inputs"], w["targets"]) for w in stream.windows(0)),
      output_signature=(tf.TensorSpec([t.batch_size, t.unroll], tf.int32),) * 2).prefetch(2)
  init = keras.initializers.RandomUniform(-m.init_scale, m.init_scale)
  layers = [keras.Input((t.unroll,), batch_size=t.batch_size, dtype="int32"),
            keras.layers.Embedding(len(vocab), m.word_dim, embeddings_initializer=init),
            keras.layers.Dropout(m.embedding_dropout)]
  for _ in range(m.num_layers):
    layers += [keras.layers.LSTM(m.lstm_units, return_sequences=True, kernel_initializer=init,
                                 recurrent_initializer=init), keras.layers.Dropout(m.dropout)]
  layers.append(keras.layers.Dense(len(vocab), kernel_initializer=init))
  model = keras.Sequential(layers)
  model.compile(keras.optimizers.SGD(config.optim.learning_rate,
                                     global_clipnorm=config.optim.clip_norm),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(ds, steps_per_epoch=20, epochs=1, verbose=0)   # build and trace, not timed
  start = time.perf_counter()
  model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
  return steps * t.batch_size * t.unroll / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = ptb_word_lstm.get_config()
  busy = background_busy()
  print(f"background CPU load before measuring: {busy:.0%}"
        + ("  (not quiet: figures will be low)" if busy > 0.15 else ""))
  peak = matmul_peak_flops()
  print(f"matmul peak (fp32, 2048^2): {peak / 1e9:.0f} GFLOP/s")
  ours_wps = ours(ptb_word_lstm.get_config(), _STEPS.value)
  print(f"ours (tfsys.train loop):   {ours_wps:.0f} words/s")
  keras_wps = keras_fit(config, _STEPS.value)
  print(f"keras 3 model.fit:         {keras_wps:.0f} words/s")
  flops = model_flops_per_word(config.model, 10_000)
  mfu = ours_wps * flops / peak
  print(f"ratio ours / keras: {ours_wps / keras_wps:.2f}; MFU {mfu:.1%} "
        f"({flops / 1e6:.1f} MFLOP per word, fwd+bwd)")
  print(json.dumps({"ours_words_per_sec": round(ours_wps, 1),
                    "keras_fit_words_per_sec": round(keras_wps, 1),
                    "ratio": round(ours_wps / keras_wps, 3), "mfu": round(mfu, 4),
                    "peak_gflops": round(peak / 1e9, 1), "background_busy": round(busy, 3)}))


if __name__ == "__main__":
  app.run(main)
