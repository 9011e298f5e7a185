"""LSTM with a recurrent projection layer (LSTMP, Sak et al. 2014; Jozefowicz et al. 2016 §3).

    z = x W_x + h_{t-1} W_h + b          i, f, g, o = split(z)
    c = σ(f + b_f) c_{t-1} + σ(i) tanh(g)  (b_f: forget bias, 1 by default: Jozefowicz et al. 2015)
    c = clip(c, ±cell_clip)              (if cell_clip > 0)
    h = (σ(o) tanh(c)) W_p               (W_p only if projection > 0; else h = σ(o) tanh(c))

The input product x W_x is one GEMM over all time steps outside the recurrence; only
h W_h runs inside `tf.scan` (DESIGN.md §2: a hand-written scan is as fast as Keras' LSTM).

Mixed precision (compute_dtype=tf.bfloat16, train.precision): the matmuls take bf16 operands
(the float32 weights cast once per call), their products come back to float32, and the gates,
the cell state c and the carried state stay float32; the outputs h are bf16, what the next
layer's and the softmax's matmuls take. With float32 (the default) nothing is cast.
"""
import tensorflow as tf

FORGET_BIAS = 1.0


def lstmp_shapes(input_dim: int, units: int, projection: int) -> dict:
  out = projection or units
  shapes = {"w_x": [input_dim, 4 * units], "w_h": [out, 4 * units], "b": [4 * units]}
  if projection:
    shapes["w_p"] = [units, projection]
  return shapes


def lstmp_cell(x_proj_t, state, w_h, w_p=None, cell_clip=0.0, forget_bias=FORGET_BIAS):
  """One step given the precomputed input product x_t W_x + b (float32). state = (c, h); h and
  the weights in the compute dtype, c in float32."""
  c, h = state
  z = x_proj_t + _float32(tf.matmul(h, w_h))
  i, f, g, o = tf.split(z, 4, axis=-1)
  c = tf.sigmoid(f + forget_bias) * c + tf.sigmoid(i) * tf.tanh(g)
  if cell_clip:
    c = tf.clip_by_value(c, -cell_clip, cell_clip)
  h = tf.cast(tf.sigmoid(o) * tf.tanh(c), w_h.dtype)
  if w_p is not None:
    h = tf.matmul(h, w_p)
  return c, h


def _float32(x):
  return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def lstmp_layer(x, state, params: dict, cell_clip: float = 0.0,
                forget_bias: float = FORGET_BIAS, compute_dtype=tf.float32):
  """Runs an LSTMP layer over x [B, T, D] from state (c, h) (float32); returns (outputs
  [B, T, P] in compute_dtype, state in float32)."""
  cast = (lambda t: t) if compute_dtype == tf.float32 else (lambda t: tf.cast(t, compute_dtype))
  x_proj = _float32(tf.einsum("btd,dg->tbg", cast(x), cast(params["w_x"]))) + params["b"]
  w_h = cast(params["w_h"])
  w_p = cast(params["w_p"]) if "w_p" in params else None

  def step(carry, x_t):
    return lstmp_cell(x_t, carry, w_h, w_p, cell_clip, forget_bias)

  c0, h0 = state
  cs, hs = tf.scan(step, x_proj, initializer=(c0, cast(h0)))
  return tf.transpose(hs, [1, 0, 2]), (cs[-1], _float32(hs[-1]))
