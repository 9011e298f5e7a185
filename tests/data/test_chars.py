import numpy as np
import tensorflow as tf

from tfsys.data import chars


def test_marks_and_padding():
  ids = chars.encode_word("cat", 8)
  assert list(ids) == [chars.BOW, ord("c"), ord("a"), ord("t"), chars.EOW] + [chars.PAD] * 3


def test_utf8_bytes():
  ids = chars.encode_word("é", 6)
  assert list(ids[:4]) == [chars.BOW, 0xC3, 0xA9, chars.EOW]


def test_long_words_are_truncated_keeping_both_marks():
  ids = chars.encode_word("x" * 100, 10)
  assert len(ids) == 10 and ids[0] == chars.BOW and ids[-1] == chars.EOW
  assert list(ids[1:-1]) == [ord("x")] * 8


def test_graph_encoding_matches_numpy():
  words = ["cat", "", "é", "x" * 7, "x" * 8, "x" * 30, "<eos>", "a\xffb"]
  expected = chars.encode_words(words, 10)
  got = chars.encode_words_tf(tf.constant(words), 10).numpy()
  np.testing.assert_array_equal(got, expected)
  batched = chars.encode_words_tf(tf.constant([words[:4], words[4:]]), 10).numpy()
  assert batched.shape == (2, 4, 10)
  np.testing.assert_array_equal(batched.reshape(8, 10), expected)
