"""Whole sentences as length-bucketed batches, for models that read one sentence at a time
(the sentence VAE of Bowman et al. 2016 and its RNNLM baseline).

A sentence of words w_1..w_n becomes, with <eos> as the boundary symbol on both sides:

    inputs   <eos> w_1 ... w_n        (the decoder's inputs: the previous word)
    targets  w_1 ... w_n <eos>        (what it predicts; also what the encoder reads)
    weights  1 ... 1                  (0 on padding)
    lengths  n + 1

Training batches are `batch_size` sentences of similar length, so little of a batch is
padding: each epoch the sentences are permuted from (seed, epoch), cut into pools of
BUCKET_POOL batches, sorted by length within a pool and cut into batches, and the batches of
the epoch are permuted again. Like the token streams (pipeline.py) the batches are a pure
function of (seed, step), so a resumed run reads what it would have read, and every batch has
exactly `batch_size` rows, so a batch splits evenly over replicas and workers by rows.

Sentences longer than `max_length` words are cut to their first `max_length` words (and their
<eos>) in training; evaluation reads every sentence whole.
"""
from typing import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from tfsys.data.pipeline import Stream
from tfsys.errors import UserError

BUCKET_POOL = 50   # batches sorted together by length: padding ~1 word a row on PTB


def batch_of(sentences: list[np.ndarray], eos_id: int) -> dict:
  """Padded arrays for sentences given as word-id arrays (without <eos>)."""
  n = len(sentences)
  width = max([len(s) for s in sentences], default=0) + 1
  inputs = np.full([n, width], eos_id, np.int32)
  targets = np.full([n, width], eos_id, np.int32)
  weights = np.zeros([n, width], np.float32)
  lengths = np.zeros([n], np.int32)
  for r, s in enumerate(sentences):
    k = len(s)
    inputs[r, 1:k + 1] = s
    targets[r, :k] = s
    weights[r, :k + 1] = 1.0
    lengths[r] = k + 1
  return {"inputs": inputs, "targets": targets, "weights": weights, "lengths": lengths,
          "reset": np.bool_(True)}


def split_sentences(ids: np.ndarray, eos_id: int) -> list[np.ndarray]:
  """A token array with <eos> after every sentence -> the sentences' word ids, without <eos>."""
  ids = np.asarray(ids, np.int32)
  ends = np.flatnonzero(ids == eos_id)
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(int)
  out = [ids[a:b] for a, b in zip(starts, ends)]
  if len(ids) and (not len(ends) or ends[-1] != len(ids) - 1):
    out.append(ids[(ends[-1] + 1) if len(ends) else 0:])   # text after the last <eos>
  return out


class SentenceBatches(Stream):
  """Training batches of whole sentences, `batch_size` rows each, forever (epoch after epoch)."""

  def __init__(self, sentences: list[np.ndarray], batch_size: int, max_length: int, eos_id: int,
               shuffle: bool = True, seed: int = 0):
    if max_length <= 0:
      raise UserError(f"--config.data.max_length must be positive, got {max_length}")
    long = sum(len(s) > max_length for s in sentences)
    if long:
      logging.info("%d of %d training sentences are longer than %d words "
                   "(--config.data.max_length): cut to their first %d words",
                   long, len(sentences), max_length, max_length)
    self.sentences = [s[:max_length] for s in sentences if len(s)]
    self.batch_size, self.eos_id = batch_size, eos_id
    self.shuffle, self.seed = shuffle, seed
    self.steps_per_epoch = len(self.sentences) // batch_size
    if self.steps_per_epoch < 1:
      raise UserError(f"{len(self.sentences)} training sentences are fewer than one batch of "
                      f"{batch_size}; lower --config.train.batch_size")
    self.tokens_per_epoch = sum(len(s) + 1 for s in self.sentences)
    # Targets per step on average (throughput): every sentence's words and its <eos>.
    self.tokens_per_step = self.tokens_per_epoch / len(self.sentences) * batch_size
    self._epoch, self._batches = None, None

  def element_spec(self, rows: int) -> dict:
    return {"inputs": tf.TensorSpec([rows, None], tf.int32),
            "targets": tf.TensorSpec([rows, None], tf.int32),
            "weights": tf.TensorSpec([rows, None], tf.float32),
            "lengths": tf.TensorSpec([rows], tf.int32),
            "reset": tf.TensorSpec([], tf.bool)}

  def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
    """The epoch's batches as arrays of sentence indices."""
    if self._epoch != epoch:
      n, b = len(self.sentences), self.batch_size
      rng = np.random.default_rng([self.seed, epoch])
      order = rng.permutation(n) if self.shuffle else np.arange(n)
      lengths = np.array([len(s) for s in self.sentences])
      batches = []
      pool = b * BUCKET_POOL
      for lo in range(0, self.steps_per_epoch * b, pool):
        chunk = order[lo:min(lo + pool, self.steps_per_epoch * b)]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[k:k + b] for k in range(0, len(chunk), b)]
      if self.shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
      self._epoch, self._batches = epoch, batches
    return self._batches

  def windows(self, start_step: int) -> Iterator[dict]:
    step = start_step
    while True:
      epoch, offset = divmod(step, self.steps_per_epoch)
      index = self._epoch_batches(epoch)[offset]
      yield batch_of([self.sentences[i] for i in index], self.eos_id)
      step += 1


def eval_batches(sentences: list[np.ndarray], batch_size: int, eos_id: int) -> Iterator[dict]:
  """Every sentence once, whole, in batches of similar length (the last one may be smaller)."""
  order = np.argsort([len(s) for s in sentences], kind="stable")
  for lo in range(0, len(order), batch_size):
    yield batch_of([sentences[i] for i in order[lo:lo + batch_size]], eos_id)
