"""Words as bytes for character-CNN inputs (Jozefowicz et al. 2016, §3.3 and their lm_1b code).

A word becomes its UTF-8 bytes between a begin-of-word and an end-of-word mark, padded to
`max_length` (50: the paper found 32 too short). Ids 0..255 are the bytes themselves, then the
marks and the padding. A word longer than max_length - 2 bytes is truncated (documented, not an
error: the marks are kept so the CNN still sees where the word starts and stops).
"""
import numpy as np
import tensorflow as tf

BOW = 256          # begin-of-word mark
EOW = 257          # end-of-word mark
PAD = 258          # padding after the end-of-word mark
NUM_CHARS = 259    # size of the char embedding table
MAX_WORD_LENGTH = 50


def encode_word(word: str, max_length: int = MAX_WORD_LENGTH) -> np.ndarray:
  """Returns int32 [max_length]: BOW, bytes (truncated to max_length - 2), EOW, PAD..."""
  body = list(word.encode("utf-8"))[:max_length - 2]
  ids = [BOW] + body + [EOW]
  return np.array(ids + [PAD] * (max_length - len(ids)), dtype=np.int32)


def encode_words(words, max_length: int = MAX_WORD_LENGTH) -> np.ndarray:
  """int32 [len(words), max_length] char ids, one row per word (e.g. a whole vocabulary)."""
  out = np.full([len(words), max_length], PAD, dtype=np.int32)
  for i, w in enumerate(words):
    out[i] = encode_word(w, max_length)
  return out


def encode_words_tf(words: tf.Tensor, max_length: int = MAX_WORD_LENGTH) -> tf.Tensor:
  """The same encoding as a graph op on a string tensor of any shape -> [..., max_length].

  Used where raw strings arrive at run time (sampling prompts, SavedModel signatures).
  """
  shape = tf.shape(words)
  flat = tf.reshape(words, [-1])
  n = tf.shape(flat)[0]
  width = max_length - 2
  # decode_raw pads short strings with zero bytes; the mask below replaces them by PAD.
  body = tf.cast(tf.io.decode_raw(tf.strings.substr(flat, 0, width), tf.uint8,
                                  fixed_length=width), tf.int32)
  lengths = tf.minimum(tf.strings.length(flat), width)[:, tf.newaxis]
  pos = tf.range(width)[tf.newaxis, :]
  body = tf.where(pos < lengths, body, tf.where(pos == lengths, EOW, PAD))
  last = tf.where(lengths == width, EOW, PAD)       # EOW of a word that fills every slot
  ids = tf.concat([tf.fill([n, 1], BOW), body, last], axis=1)
  return tf.reshape(ids, tf.concat([shape, [max_length]], axis=0))
