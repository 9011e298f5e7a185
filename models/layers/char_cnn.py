"""Character-CNN word encoder with highway layers (Kim et al. 2016 §2; Jozefowicz et al. 2016 §3.3).

    chars [N, L] → embeddings [N, L, d] → for each width w: conv (n_w filters) → act → max over time
    → concat [N, Σ n_w] → highway layers → optional linear projection.

Highway (Srivastava et al. 2015): t = σ(x W_T + b_T), y = t ⊙ act(x W_H + b_H) + (1 − t) ⊙ x,
with b_T initialised to −2 so the layer starts close to the identity (Kim et al. §2.3).
"""
import tensorflow as tf

from tfsys.data.chars import NUM_CHARS, PAD

HIGHWAY_GATE_BIAS = -2.0
ACTIVATIONS = {"tanh": tf.tanh, "relu": tf.nn.relu}


def char_cnn_shapes(char_dim, widths, filters, num_highway, projection) -> dict:
  if len(widths) != len(filters):
    raise ValueError(f"cnn_widths {widths} and cnn_filters {filters} differ in length")
  shapes = {"char_embedding": [NUM_CHARS, char_dim]}
  for w, n in zip(widths, filters):
    shapes[f"conv{w}_w"] = [w, char_dim, n]
    shapes[f"conv{w}_b"] = [n]
  width = sum(filters)
  for k in range(num_highway):
    shapes[f"highway{k}_w_h"] = [width, width]
    shapes[f"highway{k}_b_h"] = [width]
    shapes[f"highway{k}_w_t"] = [width, width]
    shapes[f"highway{k}_b_t"] = [width]
  if projection:
    shapes["cnn_projection"] = [width, projection]
  return shapes


def char_cnn(char_ids, params: dict, widths, num_highway, cnn_activation="tanh",
             highway_activation="relu", zero_pad=False):
  """char_ids int32 [N, L] → word vectors [N, Σ filters or projection].

  zero_pad: the padding after a word embeds to a fixed zero vector (Kim et al.'s Torch code
  keeps that row at zero), so the convolutions see only the word and its marks.
  """
  x = tf.nn.embedding_lookup(params["char_embedding"], char_ids)         # [N, L, d]
  if zero_pad:
    x = x * tf.cast(char_ids != PAD, x.dtype)[..., tf.newaxis]
  act = ACTIVATIONS[cnn_activation]
  n, length = tf.shape(char_ids)[0], tf.shape(char_ids)[1]
  pooled = []
  for w in widths:
    kernel = params[f"conv{w}_w"]
    conv = tf.nn.conv1d(x, kernel, stride=1, padding="VALID")
    # oneDNN's conv1d (TensorFlow's default on CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX)
    # returns an empty batch in the input's shape [0, L, d], not the output's: restate the
    # shape so an empty request works.
    conv = tf.reshape(conv, [n, length - w + 1, kernel.shape[-1]])
    pooled.append(tf.reduce_max(act(conv + params[f"conv{w}_b"]), axis=1))
  y = tf.concat(pooled, axis=-1)
  hact = ACTIVATIONS[highway_activation]
  for k in range(num_highway):
    t = tf.sigmoid(tf.matmul(y, params[f"highway{k}_w_t"]) + params[f"highway{k}_b_t"])
    g = hact(tf.matmul(y, params[f"highway{k}_w_h"]) + params[f"highway{k}_b_h"])
    y = t * g + (1.0 - t) * y
  if "cnn_projection" in params:
    y = tf.matmul(y, params["cnn_projection"])
  return y
