"""What the serving modules share: the vocabulary in the graph, raw sentences to a padded batch,
scoring in slices, the checks of a request's inputs, and `Server`, their base class.

A scoring request is scored `score_rows` sentences at a time (an export-time setting,
scripts/export.py --score_rows, default SCORE_ROWS): its memory does not grow with its size.
"""
import operator

import tensorflow as tf

from tfsys.errors import UserError

# Sentences per slice of a scoring request. Before slicing, one request held the logits of all
# its rows at once: 5,000 PTB sentences took 4.3 GB with a 2,000-word vocabulary, and 20,000
# overflowed a kernel's int32 index and crashed the server (bench/serving_memory.py).
SCORE_ROWS = 256


def check_score_rows(score_rows) -> int:
  try:
    rows = operator.index(score_rows)   # an integer of any kind; 2.5 is not
  except TypeError:
    rows = 0
  if rows < 1:
    raise UserError(f"--score_rows must be a positive number of sentences, got {score_rows!r}")
  return rows


def in_row_slices(fn, sentences, rows: int, dtypes: dict) -> dict:
  """fn(sentences[lo:lo + rows], slice index) -> {name: [n] tensor}, run on one slice after
  another of a batch and concatenated: what fn gives for the whole batch, in the memory of
  `rows` sentences. dtypes: {name: dtype} of fn's outputs."""
  batch = tf.shape(sentences)[0]
  # An empty batch is one empty slice: every signature answers an empty request in kind.
  count = tf.maximum((batch + rows - 1) // rows, 1)

  def body(j, arrays):
    out = fn(sentences[j * rows:(j + 1) * rows], j)
    return j + 1, {k: arrays[k].write(j, out[k]) for k in arrays}
  arrays = {k: tf.TensorArray(d, size=count, infer_shape=False, element_shape=[None])
            for k, d in dtypes.items()}
  # parallel_iterations=1: the slices are independent, so TensorFlow would otherwise run up to
  # ten of them at once, and hold ten slices' logits.
  _, arrays = tf.while_loop(lambda j, _: j < count, body, (tf.constant(0), arrays),
                            parallel_iterations=1)
  return {k: a.concat() for k, a in arrays.items()}


def check_temperature(temperature):
  """A request error for a temperature that is negative, NaN (which compares false with
  everything, so `>= 0` alone would let it through to sample on NaN logits) or infinite."""
  return tf.debugging.Assert(tf.math.is_finite(temperature) & (temperature >= 0.0),
                            ["temperature must be >= 0 and finite (0 = greedy), got", temperature])


def vocab_tables(vocab, vocab_asset_path: str):
  """The vocabulary asset and its two in-graph lookups: word -> id (<unk>'s id for unknown
  words) and id -> word (line number = id)."""
  asset = tf.saved_model.Asset(vocab_asset_path)
  whole, line = tf.lookup.TextFileIndex.WHOLE_LINE, tf.lookup.TextFileIndex.LINE_NUMBER
  word_to_id = tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(asset, tf.string, whole, tf.int64, line),
      default_value=vocab.unk_id)
  id_to_word = tf.lookup.StaticHashTable(
      tf.lookup.TextFileInitializer(asset, tf.int64, line, tf.string, whole),
      default_value=vocab.unk)
  return asset, word_to_id, id_to_word


def sentence_batch(sentences, word_ids, eos_id: int, max_length: int | None = None):
  """Raw sentences string [B] -> the padded batch of whole sentences (tfsys/data/sentences.py's
  layout: inputs start with a sentence end, targets end with one, weights mark the words and
  that end, lengths count them), split on whitespace, word_ids(words) their int32 ids. With
  max_length, each sentence is cut to its first max_length words and `truncated` [B] says which
  were (else None)."""
  words = tf.strings.split(sentences)                     # ragged [B, None], on whitespace
  truncated = None
  if max_length is not None:
    truncated = words.row_lengths() > max_length
    words = words[:, :max_length]
  ids = tf.ragged.map_flat_values(word_ids, words)
  batch = tf.shape(sentences)[0]
  lengths = tf.cast(ids.row_lengths(), tf.int32) + 1      # the words and the sentence end
  width = tf.maximum(tf.reduce_max(tf.concat([lengths, [1]], 0)), 1)
  eos = tf.fill([batch, 1], eos_id)
  return {"inputs": tf.concat([eos, ids], 1).to_tensor(eos_id, shape=[batch, width]),
          "targets": tf.concat([ids, eos], 1).to_tensor(eos_id, shape=[batch, width]),
          "weights": tf.sequence_mask(lengths, width, tf.float32),
          "lengths": lengths}, truncated


class Server(tf.Module):
  """The base of a model kind's serving module (models/registry.py names it): the model's
  variables, the vocabulary as an asset with its lookups, and the signatures, which run
  everything in the graph so that the SavedModel needs TensorFlow alone.

  Its classmethods are the client's side of the contract: they read a loaded SavedModel's
  signatures (scripts/evaluate.py and scripts/sample.py with --saved_model) or this module's own
  functions in process, and need nothing else of ours in the SavedModel.
  """

  def __init__(self, name: str, model, vocab, vocab_asset_path: str, score_rows: int):
    super().__init__(name=name)
    self.model = model
    self.score_rows = check_score_rows(score_rows)
    self.vocab_file, self.word_to_id, self.id_to_word = vocab_tables(vocab, vocab_asset_path)

  def signatures(self) -> dict:
    """{signature name: tf.function} to save."""
    raise NotImplementedError

  def _ids(self, words):
    return tf.cast(self.word_to_id.lookup(words), tf.int32)

  # ---------------------------------------------------------------- the client's side
  @classmethod
  def follows(cls, signatures) -> bool:
    """Whether a loaded SavedModel's signatures are this contract's."""
    raise NotImplementedError

  @staticmethod
  def log_probs(outputs):
    """A scoring signature's outputs -> each sentence's log-probability [B] (or its bound)."""
    raise NotImplementedError

  @classmethod
  def sample_text(cls, signatures, prompt: str, num_words: int, num_sentences: int,
                  temperature: float, seed: int) -> list[str]:
    """scripts/sample.py --saved_model: the texts to print, through the signatures alone."""
    raise NotImplementedError

  @classmethod
  def score_text(cls, score, sentences: list[str], batch_size: int = 64) -> dict:
    """Per-sentence scores through a scoring signature (or a server's `score`), summed over a
    text: perplexity = exp(-Σ log p / Σ num_tokens)."""
    log_prob, tokens = 0.0, 0
    for lo in range(0, len(sentences), batch_size):
      out = score(sentences=tf.constant(sentences[lo:lo + batch_size], tf.string))
      log_prob += float(tf.reduce_sum(tf.cast(cls.log_probs(out), tf.float64)))
      tokens += int(tf.reduce_sum(out["num_tokens"]))
    nll = -log_prob / max(tokens, 1)
    return {"loss": nll, "perplexity": float(tf.exp(nll)), "num_tokens": tokens}
