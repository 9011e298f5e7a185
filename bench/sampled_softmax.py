"""What the LM1B configs' sampled softmax costs beyond its three matmuls.

  python bench/sampled_softmax.py [--reps=5] [--rows=2560]

At configs/lm1b_lstm_2048_512.py's sizes (batch 128 x unroll 20 = 2,560 positions, projection
512, 8,192 sampled classes of the 793,471-word vocabulary, float32 as the model computes it):
(a) the three matmuls alone ([rows, 512] x [512, 8192]: the sampled classes' logits, then the
backward's two; the true classes' logits are a row-wise product, not a matmul); (b) the loss
and its gradient (models/layers/stateless.py's log-uniform sampler, accidental hits removed,
tf.GradientTape; the table's gradient is IndexedSlices of the rows gathered), with
TensorFlow's tf.nn.sampled_softmax_loss and with models/layers/softmax.py's (what
models/lstm_lm.py uses); (c) its parts alone: the sampler, the gathers of the sampled and true
rows. b - a is what is added around the matmuls. Medians of --reps calls of a tf.function.
The last line is one JSON object.
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

from configs import lm1b_lstm_2048_512  # noqa: E402
from models import sharded  # noqa: E402
from models.layers import stateless  # noqa: E402
from models.layers.softmax import sampled_softmax_loss  # noqa: E402

_REPS = flags.DEFINE_integer("reps", 5, "timed calls per figure")
_ROWS = flags.DEFINE_integer("rows", 0, "positions per step (0: the config's batch x unroll)")
VOCAB = 793_471


def median_ms(fn) -> float:
  return common.median_ms(fn, _REPS.value, warmup=1)


def main(argv):
  del argv
  from bench.common import background_busy
  print(f"machine busy with other work: {100 * background_busy():.0f}%")
  c = lm1b_lstm_2048_512.get_config()
  n = _ROWS.value or c.train.batch_size * c.train.unroll
  p, s = c.model.projection, c.model.num_samples
  rng = np.random.default_rng(0)
  w = tf.Variable(tf.random.stateless_normal([VOCAB, p], [0, 1], stddev=0.05))
  b = tf.Variable(tf.zeros([VOCAB]))
  h = tf.constant(rng.normal(size=(n, p)).astype(np.float32))
  # Zipf-like targets, as text has: mostly frequent words
  labels = tf.constant(np.minimum(rng.zipf(1.3, n) - 1, VOCAB - 1).astype(np.int64)[:, None])
  seed = tf.constant([3, 4], tf.int32)

  def sampled():
    return stateless.log_uniform_candidates(labels, s, VOCAB, seed)

  @tf.function
  def matmuls():
    rows = tf.gather(w, tf.range(s))               # stands in for the gathered rows
    logits = tf.matmul(h, rows, transpose_b=True)
    return tf.matmul(logits, rows)[0, 0] + tf.matmul(logits, h, transpose_a=True)[0, 0]

  def tensorflows():
    return tf.nn.sampled_softmax_loss(
        weights=w, biases=b, labels=labels, inputs=h, num_sampled=s, num_classes=VOCAB,
        sampled_values=sampled(), remove_accidental_hits=True)

  def ours():   # as models/lstm_lm.py computes it
    return sampled_softmax_loss(w, b, labels[:, 0], h, sampled(), gather=sharded.gather)

  def loss_and_gradient(fn):
    @tf.function
    def call():
      with tf.GradientTape() as tape:
        tape.watch(h)
        loss = tf.reduce_mean(fn())
      dh, dw, db = tape.gradient(loss, [h, w, b])
      return dh[0, 0] + tf.reduce_sum(dw.values[:1]) + tf.reduce_sum(db.values[:1])
    return call

  @tf.function
  def sampler():
    return tf.cast(sampled()[0][0], tf.float32)

  @tf.function
  def gathers():
    ids = tf.concat([labels[:, 0], sampled()[0]], 0)
    return tf.reduce_sum(tf.gather(w, ids)[:, 0]) + tf.reduce_sum(tf.gather(b, ids))

  mm = median_ms(matmuls)
  out = {"rows": n, "num_sampled": s, "matmuls_ms": round(mm, 1),
         "matmul_gflops": round(3 * 2 * n * p * s / mm / 1e6, 1),
         "sampler_ms": round(median_ms(sampler), 2),
         "sampler_and_gathers_ms": round(median_ms(gathers), 2)}
  print(f"{n} positions, {s} samples of {VOCAB}: 3 matmuls {out['matmuls_ms']} ms "
        f"({out['matmul_gflops']} GFLOP/s); the sampler alone {out['sampler_ms']} ms, with the "
        f"gathers {out['sampler_and_gathers_ms']} ms")
  for name, fn in (("tensorflow", tensorflows), ("ours", ours)):
    full = median_ms(loss_and_gradient(fn))
    out[name] = {"loss_and_gradient_ms": round(full, 1), "overhead_ms": round(full - mm, 1),
                 "overhead_share": round((full - mm) / full, 3)}
    print(f"{name}: loss and gradient {full:.1f} ms, of which {full - mm:.1f} ms "
          f"({100 * (full - mm) / full:.0f}%) around the matmuls")
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
