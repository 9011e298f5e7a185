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
                forget_bias: float = FORGET_BIAS, compute_dtype=tf.float32, backward=True):
  """Runs an LSTMP layer over x [B, T, D] from state (c, h) (float32); returns (outputs
  [B, T, P] in compute_dtype, state in float32). backward=False (evaluation, serving): the same
  loop without the gates' pre-activations that only the hand-written gradient needs ([T, B, 4H]
  kept per layer); a gradient taken anyway is TensorFlow's own."""
  cast = (lambda t: t) if compute_dtype == tf.float32 else (lambda t: tf.cast(t, compute_dtype))
  x_proj = _float32(tf.einsum("btd,dg->tbg", cast(x), cast(params["w_x"]))) + params["b"]
  weights = [cast(params["w_h"])] + ([cast(params["w_p"])] if "w_p" in params else [])
  c0, h0 = state
  hs, c = _recurrence(x_proj, c0, cast(h0), *weights, cell_clip=cell_clip,
                      forget_bias=forget_bias, backward=backward)
  return tf.transpose(hs, [1, 0, 2]), (c, _float32(hs[-1]))


def _recurrence(x_proj, c0, h0, w_h, w_p=None, *, cell_clip, forget_bias, backward=True):
  """The time loop: x_proj [T, B, 4H] (x W_x + b, float32) from (c0, h0) -> (hs [T, B, P],
  c_T), with a hand-written gradient.

  TensorFlow's automatic gradient of the forward loop computes, at every step of its reverse
  loop, that step's share of dW_h (h_{t-1}^T dz_t) and adds it to a running sum: two more ops
  a step, and a [P, 4H] matmul too small to use the CPU well (on PTB's word model, 140 matmuls
  and 163 additions a training step, a quarter of its time). Here the reverse loop carries only
  (dc, dh): per step one matmul (dz_t W_h^T; two with a projection), a few element-wise ops on
  coefficients computed for all T steps at once beforehand, and the weights' gradients come
  after it as one GEMM over all T x B rows each (as cuDNN arranges it). The forward keeps the
  gates' pre-activations z, from which the backward recomputes the activations.
  """
  cdt = w_h.dtype
  units = x_proj.shape[-1] // 4
  bias = tf.constant([0.0] * units + [forget_bias] * units + [0.0] * (2 * units), tf.float32)

  def cell(c, h, x_t, w_h, w_p):
    z = x_t + _float32(tf.matmul(h, w_h))
    i, f, g, o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    if cell_clip:
      c = tf.clip_by_value(c, -cell_clip, cell_clip)
    h = tf.cast(tf.sigmoid(o) * tf.tanh(c), cdt)
    if w_p is not None:
      h = tf.matmul(h, w_p)
    return c, h, z

  if not backward:   # the forget bias folded in as below: the same sums, so the same outputs
    cs, hs = tf.scan(lambda carry, x_t: cell(*carry, x_t, w_h, w_p)[:2], x_proj + bias,
                     initializer=(c0, h0))
    return hs, cs[-1]

  @tf.custom_gradient
  def loop(x_proj, c0, h0, *weights):
    w_h, w_p = weights[0], (weights[1] if len(weights) > 1 else None)

    def step(carry, x_t):
      return cell(carry[0], carry[1], x_t, w_h, w_p)

    # The forget bias folded into x_proj once, not added at every step.
    zeros = tf.zeros_like(x_proj[0])
    cs, hs, zs = tf.scan(step, x_proj + bias, initializer=(c0, h0, zeros))

    def grad(d_hs, d_c):
      # (An output nothing depends on may get None, not zeros.)
      d_hs = tf.zeros(tf.shape(hs), tf.float32) if d_hs is None else _float32(d_hs)
      d_c = tf.zeros_like(c0) if d_c is None else d_c
      s = tf.sigmoid(zs)
      si, sf, _, so = tf.split(s, 4, axis=-1)
      tg = tf.tanh(zs[..., 2 * units:3 * units])
      c_prev = tf.concat([c0[None], cs[:-1]], 0)
      tc = tf.tanh(cs)
      # dz = [dc, dc, dc, dm] * coef: the gates' derivatives, for every step at once.
      coef = tf.concat([tg * si * (1 - si), c_prev * sf * (1 - sf), si * (1 - tg * tg),
                        tc * so * (1 - so)], -1)
      to_c = so * (1 - tc * tc)             # dc += dm * to_c: through h = σ(o) tanh(c)
      steps = [d_hs, to_c, coef, sf]
      if cell_clip:   # clip_by_value's gradient: through where c before the clip is in range
        c_pre = sf * c_prev + si * tg
        steps.append(tf.cast((c_pre >= -cell_clip) & (c_pre <= cell_clip), tf.float32))

      def back(carry, xs):
        dc, dh = carry[:2]
        dh = xs[0] + dh
        dm = _float32(tf.matmul(tf.cast(dh, cdt), w_p, transpose_b=True)) if w_p is not None else dh
        dc = dc + dm * xs[1]
        if cell_clip:
          dc = dc * xs[4]
        dz = tf.cast(tf.concat([dc, dc, dc, dm], -1) * xs[2], cdt)   # as the matmuls take it
        dh_prev = _float32(tf.matmul(dz, w_h, transpose_b=True))
        return (dc * xs[3], dh_prev, dz) + ((dh,) if w_p is not None else ())

      init = (d_c, tf.zeros_like(d_hs[0]), tf.cast(zeros, cdt))
      if w_p is not None:
        init += (tf.zeros_like(d_hs[0]),)
      dc0, dh0s, dzs, *dhs = tf.scan(back, steps, initializer=init, reverse=True)
      rows = lambda t: tf.reshape(tf.cast(t, cdt), [-1, t.shape[-1]])   # [T x B, n]
      h_prev = tf.concat([h0[None], hs[:-1]], 0)
      grads = [_float32(dzs), dc0[0], tf.cast(dh0s[0], cdt),
               tf.matmul(rows(h_prev), rows(dzs), transpose_a=True)]
      if w_p is not None:
        grads.append(tf.matmul(rows(so * tc), rows(dhs[0]), transpose_a=True))
      return grads

    return (hs, cs[-1]), grad

  weights = [w_h] if w_p is None else [w_h, w_p]
  return loop(x_proj, tf.convert_to_tensor(c0), h0, *map(tf.convert_to_tensor, weights))


def autodiff_lstmp_layer(x, state, params: dict, cell_clip: float = 0.0,
                         forget_bias: float = FORGET_BIAS, compute_dtype=tf.float32):
  """lstmp_layer as it was until 2026-12: lstmp_cell in tf.scan, its gradient derived by
  TensorFlow. The reference of the hand-written gradient (tests/models/test_layers.py) and the
  baseline of bench/recurrence.py."""
  cast = (lambda t: t) if compute_dtype == tf.float32 else (lambda t: tf.cast(t, compute_dtype))
  x_proj = _float32(tf.einsum("btd,dg->tbg", cast(x), cast(params["w_x"]))) + params["b"]
  w_h = cast(params["w_h"])
  w_p = cast(params["w_p"]) if "w_p" in params else None
  c0, h0 = state
  cs, hs = tf.scan(lambda s, x_t: lstmp_cell(x_t, s, w_h, w_p, cell_clip, forget_bias), x_proj,
                   initializer=(c0, cast(h0)))
  return tf.transpose(hs, [1, 0, 2]), (cs[-1], _float32(hs[-1]))
