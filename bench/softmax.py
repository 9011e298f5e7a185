"""What the full softmax's loss and gradient cost beyond their three matmuls.

  python bench/softmax.py [--reps=20]

At the PTB word model's sizes (700 positions = batch 20 x 35, 200 units, vocabulary 10,000),
in float32 and in bf16 as train.precision=bfloat16 computes it (models/sharded.py: bf16
operands, float32 logits, bias and loss): (a) the three matmuls alone (logits, and the two of
the backward: to the hidden states and to the weights); (b) the loss and its gradient, as the
model computes them (matmul, cast, bias, models/layers/softmax.py's cross-entropy,
tf.GradientTape); (c) the forward loss alone. b - a is what is added around the matmuls: the
[700, 10000] logits' materialisation, the cross-entropy, the casts, the bias and its gradient.
Then the cross-entropy alone on [700, 10000] logits, forward and backward and forward alone:
TensorFlow's fused kernel (tf.nn.sparse_softmax_cross_entropy_with_logits) against ours.
Medians of --reps calls of a tf.function. The last line is one JSON object.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench import common  # noqa: E402
from models import sharded  # noqa: E402
from models.layers.softmax import sparse_softmax_cross_entropy  # noqa: E402

_REPS = flags.DEFINE_integer("reps", 20, "timed calls per figure")
N, P, V = 700, 200, 10_000


def median_ms(fn) -> float:
  return common.median_ms(fn, _REPS.value)


def measure(dtype) -> dict:
  rng = np.random.default_rng(0)
  h = tf.cast(tf.constant(rng.normal(size=(N, P)), tf.float32), dtype)
  w = tf.Variable(tf.constant(0.05 * rng.normal(size=(V, P)), tf.float32))
  b = tf.Variable(tf.zeros([V]))
  targets = tf.constant(rng.integers(0, V, N), tf.int32)

  @tf.function
  def matmuls():
    wc = tf.cast(w, dtype)
    logits = tf.matmul(h, wc, transpose_b=True)    # stands in for the logits' gradient too
    to_h, to_w = tf.matmul(logits, wc), tf.matmul(logits, h, transpose_a=True)
    return tf.cast(to_h[0, 0], tf.float32) + tf.cast(to_w[0, 0], tf.float32)

  def loss():   # as models/lstm_lm.py computes it
    logits = sharded.logits(h, w, b)               # float32 whatever h's dtype
    return tf.reduce_mean(sparse_softmax_cross_entropy(targets, logits))

  @tf.function
  def loss_and_gradient():
    with tf.GradientTape() as tape:
      tape.watch(h)
      value = loss()
    to_h, to_w, to_b = tape.gradient(value, [h, w, b])
    return tf.cast(to_h[0, 0], tf.float32) + to_w[0, 0] + to_b[0]

  mm, full, forward = median_ms(matmuls), median_ms(loss_and_gradient), median_ms(tf.function(loss))
  return {**cross_entropy(targets), "matmuls_ms": round(mm, 2), "loss_and_gradient_ms": round(full, 2),
          "forward_loss_ms": round(forward, 2), "overhead_ms": round(full - mm, 2),
          "overhead_share": round((full - mm) / full, 3),
          "matmul_gflops": round(3 * 2 * N * P * V / mm / 1e6, 1)}


def cross_entropy(targets) -> dict:
  """The cross-entropy alone on [N, V] float32 logits, forward and backward, and forward alone:
  TensorFlow's fused kernel against models/layers/softmax.py's."""
  logits = tf.constant(np.random.default_rng(1).normal(size=(N, V)), tf.float32)
  out = {}
  for name, fn in (("kernel", tf.nn.sparse_softmax_cross_entropy_with_logits),
                   ("ours", sparse_softmax_cross_entropy)):
    def both(fn=fn):
      with tf.GradientTape() as tape:
        tape.watch(logits)
        value = tf.reduce_mean(fn(targets, logits))
      return value + tape.gradient(value, logits)[0, 0]
    out[f"xent_{name}_ms"] = round(median_ms(tf.function(both)), 2)
    out[f"xent_{name}_forward_ms"] = round(
        median_ms(tf.function(lambda fn=fn: tf.reduce_sum(fn(targets, logits)))), 2)
  return out


def main(argv):
  del argv
  from bench.common import background_busy
  print(f"machine busy with other work: {100 * background_busy():.0f}%")
  out = {}
  for dtype in (tf.float32, tf.bfloat16):
    r = out[dtype.name] = measure(dtype)
    print(f"{dtype.name}: 3 matmuls {r['matmuls_ms']} ms ({r['matmul_gflops']} GFLOP/s); loss and "
          f"gradient {r['loss_and_gradient_ms']} ms, of which {r['overhead_ms']} ms "
          f"({100 * r['overhead_share']:.0f}%) around the matmuls; the forward loss alone "
          f"{r['forward_loss_ms']} ms; the cross-entropy alone, forward and backward (forward): "
          f"TensorFlow's kernel {r['xent_kernel_ms']} ({r['xent_kernel_forward_ms']}) ms, ours "
          f"{r['xent_ours_ms']} ({r['xent_ours_forward_ms']}) ms")
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
