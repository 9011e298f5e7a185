"""tf.data pipelines that cut a token stream into [batch, unroll] windows for stateful LMs.

Training (Zaremba et al. 2014; Jozefowicz et al. 2016): the stream is split into `batch` rows
and step s reads columns [s*unroll, (s+1)*unroll] of every row, so row r of one batch continues
row r of the previous batch and the LSTM state is carried from step to step. Each element
also carries `reset` (true on the first window of an epoch) so the loop zeroes the state where
the rows start over.

The windows are a pure function of (seed, step): a run that resumes at step s reads exactly
the windows it would have read, and two runs with the same seed read the same data.

Sharding: `dataset(start_step, input_context)` gives input pipeline i of n the rows
[i*B/n, (i+1)*B/n) of every global batch, as per-replica batches in replica order, which
is what `strategy.distribute_datasets_from_function` expects. A global batch is the same
however it is split, so the data do not depend on the number of workers.
"""
from typing import Iterator

import numpy as np
import tensorflow as tf

from tfsys.data.corpus import Corpus, read_sentences
from tfsys.data.vocab import Vocabulary
from tfsys.errors import UserError


def _window_spec(batch: int, unroll: int):
  return {"inputs": tf.TensorSpec([batch, unroll], tf.int32),
          "targets": tf.TensorSpec([batch, unroll], tf.int32),
          "weights": tf.TensorSpec([batch, unroll], tf.float32),
          "reset": tf.TensorSpec([], tf.bool)}


class Stream:
  """The base of the training streams (these and tfsys/data/sentences.py's SentenceBatches):
  yields global [batch, unroll] windows from `start_step` on, forever (epoch after epoch)."""
  batch_size: int
  unroll: int
  # A UserError the generator of dataset() raised (a corrupt corpus line, an empty split):
  # tf.data reports it only as an UnknownError without its message, so the training loop
  # raises this instead (Controller.train).
  failure: UserError | None = None

  def windows(self, start_step: int) -> Iterator[dict]:
    raise NotImplementedError

  def element_spec(self, rows: int) -> dict:
    return _window_spec(rows, self.unroll)

  def replica_windows(self, start_step: int, input_context: tf.distribute.InputContext
                      ) -> Iterator[dict]:
    """The rows of each window that belong to this input pipeline, one replica's at a time
    (numpy, no tf.data: what a parameter-server worker feeds its step directly)."""
    b = self.batch_size
    n_pipes = input_context.num_input_pipelines
    n_rep = input_context.num_replicas_in_sync
    if b % n_rep:
      raise UserError(f"global batch {b} does not split evenly over {n_rep} replicas")
    per_replica = b // n_rep
    first = input_context.input_pipeline_id * (b // n_pipes)
    local = (b // n_pipes) // per_replica
    for w in self.windows(start_step):
      for k in range(local):
        lo = first + k * per_replica
        yield {key: (v if key == "reset" else v[lo:lo + per_replica]) for key, v in w.items()}

  def dataset(self, start_step: int = 0, input_context: tf.distribute.InputContext | None = None
              ) -> tf.data.Dataset:
    b = self.batch_size
    if input_context is None:
      windows, spec = (lambda: self.windows(start_step)), self.element_spec(b)
    else:
      windows = lambda: self.replica_windows(start_step, input_context)  # noqa: E731
      spec = self.element_spec(b // input_context.num_replicas_in_sync)

    def gen():
      try:
        yield from windows()
      except UserError as e:
        self.failure = e
        raise
    # Infinite, as every stream is, said so: a generator's size is unknown to tf.data, and
    # MultiWorkerMirroredStrategy then guards each step's next() against a worker that ran out
    # (get_next_as_optional) with an all-reduce of every worker's has-data flag: a collective
    # on each step's critical path (bench/scaling.py: 2 workers 0.55-0.57 -> 0.57-0.60
    # efficiency without it, interleaved runs).
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec).apply(
        tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY)).prefetch(2)
    # Nothing here to autotune (a Python generator, a fixed buffer), and the autotune thread
    # can hold up the iterator's deletion, and so the end of a run, until its next wake-up (10
    # ms x (2^k - 1) after the start: up to a minute): a lost wake-up measured in
    # bench/tfdata_iterator_wait.py, and what capped Keras fit at "3,418 words/s".
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


class ArrayStream(Stream):
  """An in-memory stream (PTB, plain text): `batch` contiguous segments of the token array.

  With `shuffle`, the order of sentences is permuted anew every epoch from (seed, epoch);
  without it every epoch reads the corpus in order (the standard PTB set-up).
  """

  def __init__(self, ids: np.ndarray, batch_size: int, unroll: int, eos_id: int,
               shuffle: bool = False, seed: int = 0):
    self.ids = np.asarray(ids, np.int32)
    self.batch_size, self.unroll = batch_size, unroll
    self.shuffle, self.seed = shuffle, seed
    self.row_len = len(self.ids) // batch_size
    self.steps_per_epoch = (self.row_len - 1) // unroll
    if self.steps_per_epoch < 1:
      raise UserError(f"corpus of {len(self.ids)} tokens is too small for batch {batch_size} "
                      f"x unroll {unroll}; lower --config.train.batch_size or unroll")
    # Sentence spans for shuffling; text after the last sentence end is a sentence too.
    ends = np.flatnonzero(self.ids == eos_id) + 1
    if not len(ends) or ends[-1] != len(self.ids):
      ends = np.append(ends, len(self.ids))
    self._starts, self._ends = np.concatenate([[0], ends[:-1]]), ends
    self._epoch, self._rows = None, None

  def _epoch_rows(self, epoch: int) -> np.ndarray:
    if self._epoch != epoch:
      ids = self.ids
      if self.shuffle:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self._starts))
        ids = np.concatenate([ids[self._starts[i]:self._ends[i]] for i in order])
      self._rows = ids[:self.batch_size * self.row_len].reshape(self.batch_size, self.row_len)
      self._epoch = epoch
    return self._rows

  def windows(self, start_step):
    step = start_step
    ones = np.ones([self.batch_size, self.unroll], np.float32)
    while True:
      epoch, offset = divmod(step, self.steps_per_epoch)
      rows = self._epoch_rows(epoch)
      lo = offset * self.unroll
      yield {"inputs": rows[:, lo:lo + self.unroll], "targets": rows[:, lo + 1:lo + self.unroll + 1],
             "weights": ones, "reset": np.bool_(offset == 0)}
      step += 1


class ShardStream(Stream):
  """A stream over many files too big for memory (One Billion Word).

  Row r takes sentences r, r+B, r+2B, ... of the epoch's sentence order (shard order shuffled
  from (seed, epoch)); each row is a continuous token stream. Resuming at step s replays the
  reading (not the model) up to s: cheap next to training, and exact.
  """

  def __init__(self, corpus: Corpus, vocab: Vocabulary, split: str, batch_size: int,
               unroll: int, shuffle: bool = True, seed: int = 0):
    self.corpus, self.vocab, self.split = corpus, vocab, split
    self.batch_size, self.unroll = batch_size, unroll
    self.shuffle, self.seed = shuffle, seed
    self.steps_per_epoch = None  # unknown without reading the whole corpus

  def _sentences(self):
    epoch = 0
    while True:
      files = list(self.corpus.files(self.split))
      if self.shuffle:
        np.random.default_rng([self.seed, epoch]).shuffle(files)
      found = False
      for path in files:
        for words in read_sentences(path, self.corpus.utf8_errors):
          found = True
          yield np.append(self.vocab.encode(words), np.int32(self.vocab.eos_id))
      if not found:   # (else the windows would wait for a sentence for ever)
        raise UserError(f"no sentences in the {self.split} split's {len(files)} file(s), "
                        f"{', '.join(files[:3])}{', ...' if len(files) > 3 else ''}")
      epoch += 1

  def windows(self, start_step):
    b, t = self.batch_size, self.unroll
    sentences = self._sentences()
    buffers = [np.zeros([0], np.int32) for _ in range(b)]
    step = 0
    while True:
      for r in range(b):
        while len(buffers[r]) < t + 1:
          buffers[r] = np.concatenate([buffers[r], next(sentences)])
      if step >= start_step:
        window = np.stack([buf[:t + 1] for buf in buffers])
        yield {"inputs": window[:, :-1], "targets": window[:, 1:],
               "weights": np.ones([b, t], np.float32), "reset": np.bool_(step == 0)}
      buffers = [buf[t:] for buf in buffers]
      step += 1


def eval_windows(ids: np.ndarray, batch_size: int, unroll: int) -> Iterator[dict]:
  """Every token of `ids` after the first, exactly once: `batch_size` rows, zero-weight padding.

  Each row starts from a fresh state; the perplexity is exp(sum of weighted NLL / sum weights).
  """
  ids = np.asarray(ids, np.int32)
  n = len(ids) - 1
  if n < 1:
    raise UserError("text to evaluate has fewer than two tokens")
  batch_size = max(1, min(batch_size, n))
  row_len = -(-n // batch_size)
  steps = -(-row_len // unroll)
  total = batch_size * steps * unroll
  inputs = np.zeros(total, np.int32)
  targets = np.zeros(total, np.int32)
  weights = np.zeros(total, np.float32)
  # Lay the n (input, target) pairs row-major over [batch, steps*unroll], padding at each row end.
  per_row = row_len
  for r in range(batch_size):
    lo, hi = r * per_row, min((r + 1) * per_row, n)
    if lo >= hi:
      continue
    base = r * steps * unroll
    inputs[base:base + hi - lo] = ids[lo:hi]
    targets[base:base + hi - lo] = ids[lo + 1:hi + 1]
    weights[base:base + hi - lo] = 1.0
  shape = [batch_size, steps * unroll]
  inputs, targets, weights = (a.reshape(shape) for a in (inputs, targets, weights))
  for s in range(steps):
    sl = slice(s * unroll, (s + 1) * unroll)
    yield {"inputs": inputs[:, sl], "targets": targets[:, sl], "weights": weights[:, sl],
           "reset": np.bool_(s == 0)}
