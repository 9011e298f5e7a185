import numpy as np
import pytest
import tensorflow as tf

from tfsys.data import ArrayStream, OneBillionWord, ShardStream, eval_windows
from tfsys.errors import UserError


def _stream(n=1000, batch=4, unroll=5, **kw):
  ids = np.arange(n, dtype=np.int32) % 97
  ids[::10] = 0  # sentence ends every 10 tokens (eos id 0)
  return ids, ArrayStream(ids, batch, unroll, eos_id=0, **kw)


def test_rows_continue_across_batches():
  ids, s = _stream()
  it = s.windows(0)
  a, b = next(it), next(it)
  assert a["inputs"].shape == (4, 5)
  np.testing.assert_array_equal(a["targets"][:, :-1], a["inputs"][:, 1:])  # next-word targets
  # Row r of batch 2 starts where row r of batch 1 stopped.
  np.testing.assert_array_equal(b["inputs"][:, 0], a["targets"][:, -1])
  row_len = len(ids) // 4
  np.testing.assert_array_equal(a["inputs"][:, 0], ids[np.arange(4) * row_len])
  assert a["reset"] and not b["reset"]


def test_epochs_restart_rows_and_reset_state():
  _, s = _stream()
  it = s.windows(0)
  first = next(it)
  for _ in range(s.steps_per_epoch - 1):
    next(it)
  again = next(it)
  assert again["reset"]
  np.testing.assert_array_equal(again["inputs"], first["inputs"])


def test_resume_reads_the_same_windows():
  _, s = _stream(shuffle=True, seed=3)
  full = [w for _, w in zip(range(2 * s.steps_per_epoch + 3), s.windows(0))]
  _, s2 = _stream(shuffle=True, seed=3)
  start = s.steps_per_epoch + 2
  resumed = [w for _, w in zip(range(5), s2.windows(start))]
  for w, r in zip(full[start:], resumed):
    np.testing.assert_array_equal(w["inputs"], r["inputs"])
    assert w["reset"] == r["reset"]


def test_shuffle_is_deterministic_under_seed_and_changes_per_epoch():
  def epoch_rows(seed, epoch):
    _, s = _stream(shuffle=True, seed=seed)
    return s._epoch_rows(epoch).copy()
  np.testing.assert_array_equal(epoch_rows(1, 0), epoch_rows(1, 0))
  assert not np.array_equal(epoch_rows(1, 0), epoch_rows(1, 1))
  assert not np.array_equal(epoch_rows(1, 0), epoch_rows(2, 0))
  # A permutation of sentences: same multiset of tokens.
  _, s = _stream(shuffle=True, seed=1)
  assert sorted(s._epoch_rows(1).ravel()) == sorted(s._epoch_rows(0).ravel())


def test_input_context_shards_rows_of_the_global_batch():
  _, s = _stream(batch=8)
  whole = next(iter(s.dataset(0)))
  parts = []
  for pipe in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipe,
                                     num_replicas_in_sync=4)
    it = iter(s.dataset(0, ctx))
    parts += [next(it), next(it)]  # two replicas per pipeline, in replica order
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), whole["inputs"])
  assert all(p["inputs"].shape == (2, 5) for p in parts)


def test_the_stream_says_it_is_infinite_and_reads_on_past_an_epoch():
  """tf.data.INFINITE_CARDINALITY (so MultiWorkerMirroredStrategy's iterator takes no per-step
  all-reduce of the workers' has-data flags), whole and sharded; true past the first epoch."""
  _, s = _stream(n=100, batch=2, unroll=5)
  ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                   num_replicas_in_sync=2)
  for ds in (s.dataset(0), s.dataset(0, ctx)):
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
  assert s.steps_per_epoch == 9
  resets = [bool(w["reset"]) for w in s.dataset(0).take(3 * s.steps_per_epoch)]
  assert sum(resets) == 3


def test_too_small_corpus():
  with pytest.raises(UserError, match="too small"):
    ArrayStream(np.arange(10, dtype=np.int32), 4, 5, eos_id=0)


@pytest.mark.parametrize("batch,unroll", [(1, 7), (3, 4), (5, 100)])
def test_eval_windows_cover_every_token_once(batch, unroll):
  ids = np.arange(50, dtype=np.int32)
  pairs = []
  for w in eval_windows(ids, batch, unroll):
    m = w["weights"] > 0
    pairs += list(zip(w["inputs"][m], w["targets"][m]))
  assert sorted(pairs) == [(i, i + 1) for i in range(49)]


def test_a_shard_stream_over_empty_shards_is_an_error_not_a_hang(lm1b_dir):
  corpus = OneBillionWord(str(lm1b_dir))
  vocab = corpus.build_vocabulary()
  for path in corpus.files("train"):
    open(path, "w").close()
  s = ShardStream(corpus, vocab, "train", batch_size=2, unroll=4)
  with pytest.raises(UserError, match=r"no sentences in the train split's 3 file\(s\), .*news"):
    next(s.windows(0))


def test_shard_stream_reads_lm1b_layout(lm1b_dir):
  corpus = OneBillionWord(str(lm1b_dir))
  vocab = corpus.build_vocabulary()
  s = ShardStream(corpus, vocab, "train", batch_size=3, unroll=4, shuffle=True, seed=0)
  windows = [w for _, w in zip(range(6), s.windows(0))]
  for a, b in zip(windows, windows[1:]):
    np.testing.assert_array_equal(b["inputs"][:, 0], a["targets"][:, -1])
  resumed = [w for _, w in zip(range(2), s.windows(4))]
  np.testing.assert_array_equal(resumed[0]["inputs"], windows[4]["inputs"])
  assert windows[0]["reset"] and not resumed[0]["reset"]
  words = set(vocab.decode(np.concatenate([w["inputs"].ravel() for w in windows])))
  assert {"shard", "line", "</S>"} <= words


def test_a_training_run_reports_the_streams_own_error(lm1b_dir):
  """A UserError raised inside the training stream's generator (here: no sentences to train
  on) reaches the user as itself; tf.data alone reports it as an UnknownError without its
  message."""
  from configs import lm1b_lstm_2048_512
  from tfsys.train import train_and_evaluate
  for path in OneBillionWord(str(lm1b_dir)).files("train"):
    open(path, "w").close()
  c = lm1b_lstm_2048_512.get_config("smoke")
  c.data.corpus, c.data.dir = "lm1b", str(lm1b_dir)
  c.train.num_steps = 2
  with pytest.raises(UserError, match=r"no sentences in the train split's 3 file\(s\)"):
    train_and_evaluate(c, str(lm1b_dir / "run"))
