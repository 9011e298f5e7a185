"""Shared fixtures: quiet TensorFlow, small corpora written to temp dirs."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "kernels: results depend on the CPU's kernels (serving, numerics); .ci/run runs "
      "these again with TF_ENABLE_ONEDNN_OPTS=1 and =0")

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "the mat is red",
    "dogs and cats are pets",
] * 20


@pytest.fixture
def text_corpus_dir(tmp_path):
  """A plain-text corpus: train/valid/test files, one sentence per line."""
  for split, lines in (("train", SENTENCES), ("valid", SENTENCES[:10]), ("test", SENTENCES[5:15])):
    (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return tmp_path


@pytest.fixture
def lm1b_dir(tmp_path):
  """A tiny tree with the One Billion Word benchmark's layout and vocabulary file."""
  train = tmp_path / "training-monolingual.tokenized.shuffled"
  held = tmp_path / "heldout-monolingual.tokenized.shuffled"
  train.mkdir()
  held.mkdir()
  for k in range(3):
    (train / f"news.en-{k + 1:05d}-of-00100").write_text(
        "\n".join(f"shard {k} line {i} the cat sat" for i in range(30)) + "\n")
  for k in range(2):
    (held / f"news.en.heldout-{k:05d}-of-00050").write_text(
        "\n".join(f"heldout {k} line {i} the dog" for i in range(10)) + "\n")
  words = ["</S>", "<S>", "<UNK>", "the", "line", "cat", "sat", "shard", "dog", "heldout"]
  words += [str(i) for i in range(30)]
  (tmp_path / "1b_word_vocab.txt").write_text(
      "".join(f"{w} {1000 - i}\n" for i, w in enumerate(words)))
  return tmp_path
