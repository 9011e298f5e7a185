"""Whole-sentence batches: layout, bucketing, determinism, resume, truncation, sharding."""
import numpy as np
import pytest
import tensorflow as tf

from tfsys.data.sentences import SentenceBatches, batch_of, eval_batches, split_sentences
from tfsys.errors import UserError

EOS = 1


def _sentences(n=203, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(2, 50, size=rng.integers(1, 40)).astype(np.int32) for _ in range(n)]


def test_batch_layout_inputs_targets_weights_lengths():
  b = batch_of([np.array([5, 6, 7]), np.array([8])], EOS)
  np.testing.assert_array_equal(b["inputs"], [[1, 5, 6, 7], [1, 8, 1, 1]])
  np.testing.assert_array_equal(b["targets"], [[5, 6, 7, 1], [8, 1, 1, 1]])
  np.testing.assert_array_equal(b["weights"], [[1, 1, 1, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(b["lengths"], [4, 2])


def test_split_sentences_inverts_the_token_stream():
  ids = np.array([5, 6, EOS, EOS, 7, EOS, 8], np.int32)
  parts = split_sentences(ids, EOS)
  assert [p.tolist() for p in parts] == [[5, 6], [], [7], [8]]


def test_an_epoch_reads_every_sentence_once_in_full_batches_of_similar_length():
  sents = _sentences()
  stream = SentenceBatches(sents, 10, 100, EOS, shuffle=True, seed=3)
  assert stream.steps_per_epoch == 20
  it = stream.windows(0)
  seen, padding, words = [], 0.0, 0.0
  for _ in range(stream.steps_per_epoch):
    b = next(it)
    assert b["targets"].shape[0] == 10
    for row, n in zip(b["targets"], b["lengths"]):
      seen.append(tuple(row[:n - 1]))
    padding += (1 - b["weights"]).sum()
    words += b["weights"].sum()
  assert len(set(seen)) == len(seen) == 200            # 3 left over this epoch, none twice
  assert set(seen) <= {tuple(s) for s in sents}
  assert padding / words < 0.1                        # bucketing: little padding


def test_batches_are_a_pure_function_of_seed_and_step():
  sents = _sentences()
  a = SentenceBatches(sents, 10, 100, EOS, seed=3)
  b = SentenceBatches(sents, 10, 100, EOS, seed=3)
  whole = [next(it) for it in [a.windows(0)] for _ in range(45)]
  resumed = b.windows(37)                             # mid second epoch, fresh object
  for s in range(37, 45):
    got = next(resumed)
    for k in ("inputs", "targets", "weights", "lengths"):
      np.testing.assert_array_equal(got[k], whole[s][k])
  other = next(SentenceBatches(sents, 10, 100, EOS, seed=4).windows(0))
  assert not np.array_equal(other["targets"], whole[0]["targets"])
  assert not np.array_equal(whole[20]["targets"], whole[0]["targets"])   # epochs differ


def test_long_training_sentences_are_cut_and_the_cut_is_logged(caplog):
  sents = [np.arange(2, 30, dtype=np.int32)] * 4 + [np.array([2, 3], np.int32)] * 4
  with caplog.at_level("INFO"):
    stream = SentenceBatches(sents, 4, 10, EOS, shuffle=False)
  assert "4 of 8 training sentences are longer than 10 words" in caplog.text
  assert max(int(next(stream.windows(s))["lengths"].max()) for s in range(2)) == 11
  with pytest.raises(UserError, match="max_length must be positive"):
    SentenceBatches(sents, 4, 0, EOS)
  with pytest.raises(UserError, match="fewer than one batch"):
    SentenceBatches(sents, 100, 10, EOS)


def test_eval_batches_read_every_sentence_whole():
  sents = _sentences(57)
  got = []
  for b in eval_batches(sents, 8, EOS):
    for row, n in zip(b["targets"], b["lengths"]):
      got.append(tuple(row[:n - 1]))
  assert sorted(got) == sorted(tuple(s) for s in sents)


def test_sharded_rows_split_a_global_batch_without_changing_it():
  stream = SentenceBatches(_sentences(), 8, 100, EOS, seed=1)
  whole = next(stream.windows(5))
  pieces = []
  for pipe in range(2):   # 2 workers x 2 replicas each: 2 rows per replica
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipe,
                                     num_replicas_in_sync=4)
    it = stream.replica_windows(5, ctx)
    pieces += [next(it) for _ in range(2)]
  assert all(p["targets"].shape[0] == 2 for p in pieces)
  for k in ("targets", "lengths"):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in pieces]), whole[k])
