"""The LSTM recurrence's forward and backward: TensorFlow's gradient of the time loop against
models/layers/lstm.py's hand-written one.

  python bench/recurrence.py [--rounds=20]

Both run configs/ptb_word_lstm.py's two LSTM layers (batch 20 x 35 steps, 200 units, no
projection; float32 and bf16 mixed precision) forward and backward on the same inputs, as
tf.functions, in alternating rounds of 3 calls each (the machine's drift hits both alike); the
medians are printed. The last line is one JSON object: per precision, `autodiff_ms`, `ours_ms`
and `speedup`.
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
from models.layers.lstm import autodiff_lstmp_layer, lstmp_layer, lstmp_shapes  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 20, "alternating rounds of 3 calls per contender")


def contender(layer, dtype, layers, x, upstream):
  zeros = tf.zeros([x.shape[0], upstream.shape[-1]])

  @tf.function
  def forward_backward():
    with tf.GradientTape() as tape:
      y = x
      for params in layers:
        y, _ = layer(y, (zeros, zeros), params, 0.0, compute_dtype=dtype)
      loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(loss, [v for params in layers for v in params.values()])
    return tf.add_n([tf.reduce_sum(g) for g in grads])
  for _ in range(3):
    forward_backward().numpy()
  return forward_backward


def measure(dtype, rounds: int) -> dict:
  model = ptb_word_lstm.get_config().model
  batch, steps = 20, 35
  dim, units = model.word_dim, model.lstm_units
  rng = np.random.default_rng(0)
  layers = [{k: tf.Variable(rng.normal(0, 0.1, s).astype(np.float32))
             for k, s in lstmp_shapes(dim if n == 0 else units, units, 0).items()}
            for n in range(model.num_layers)]
  x = tf.constant(rng.normal(size=(batch, steps, dim)).astype(np.float32))
  upstream = tf.constant(rng.normal(size=(batch, steps, units)).astype(np.float32))
  fns = {"autodiff": contender(autodiff_lstmp_layer, dtype, layers, x, upstream),
         "ours": contender(lstmp_layer, dtype, layers, x, upstream)}
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      for _ in range(3):
        t = time.perf_counter()
        fn().numpy()
        times[name].append(time.perf_counter() - t)
  ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
  return {"autodiff_ms": round(ms["autodiff"], 2), "ours_ms": round(ms["ours"], 2),
          "speedup": round(ms["autodiff"] / ms["ours"], 3)}


def main(argv):
  del argv
  from bench.common import background_busy
  print(f"machine busy with other work: {100 * background_busy():.0f}%")
  out = {}
  for dtype in (tf.float32, tf.bfloat16):
    out[dtype.name] = r = measure(dtype, _ROUNDS.value)
    print(f"{dtype.name}: two LSTM layers forward and backward: TensorFlow's gradient of the loop "
          f"{r['autodiff_ms']} ms, the hand-written one {r['ours_ms']} ms ({r['speedup']}x)")
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
