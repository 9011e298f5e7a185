"""SavedModels for inference: a trained language model with a serving contract on raw strings
(the sentence VAE's contract is in tfsys/export_vae.py; export() writes either).

`export(workdir, export_dir)` writes the newest checkpoint of a workdir to
`export_dir/<version>/` (TensorFlow Serving's layout: a new integer version per export, written
under a temporary name and renamed when complete, never over an existing one). Everything a
client needs runs in the graph: whitespace tokenisation, the vocabulary (an asset file, one
word per line, id = line number) with `<unk>` for unknown words, and the char encoding.

Signatures (batch dimension first, any batch size including 0):

  serving_default  sentences string [B]
                   -> log_prob float [B]   natural-log probability of the sentence's words and
                                           its sentence end, from a zero state, the first word
                                           predicted after a sentence end (in training every
                                           sentence follows one)
                      num_tokens int32 [B] words + 1 (the sentence end)
                      perplexity float [B] exp(-log_prob / num_tokens)
  generate         prompt string [B], max_words int32 [], temperature float [], seed int32 []
                   -> text string [B]      the prompt and up to max_words generated words,
                                           sentence ends as line breaks (scripts/sample.py's
                                           rendering); temperature 0 = greedy; the same seed
                                           gives the same text; an empty prompt starts a sentence
  step             words string [B], state float [B, S]
                   -> log_probs float [B, V], state float [B, S],
                      top_words string [B, 10], top_log_probs float [B, 10]
                      one step of the LM; the recurrent state travels with the request (TF
                      Serving keeps none); a zero state starts a text. S = num_layers ×
                      (lstm_units + state size), laid out [c_0, h_0, c_1, h_1, ...]
  embed            words string [B] -> embeddings float [B, D]: the char-CNN embedding of
                   each word from its bytes, so it works for words outside the vocabulary
                   (word-input models: the embedding of the word's id, <unk> if unknown)

Inputs that are not errors: an empty sentence scores its sentence end alone; words are bytes,
so non-UTF-8 input is scored like any unknown word; words longer than max_word_length - 2
bytes are truncated in the char encoding; max_words <= 0 returns the prompt alone, and at most
MAX_GENERATE_WORDS are generated. Errors (a request error, InvalidArgumentError naming the
input, never a crash of the server): a temperature that is negative, NaN or infinite; a state
of the wrong size, or with a NaN or infinite entry (its log_probs would all be NaN and its
top_words ranked on NaN).

Memory of a scoring request is bounded whatever its size: its sentences are scored
`score_rows` at a time (an export-time setting, scripts/export.py --score_rows, default
SCORE_ROWS), each slice padded to its own longest sentence, and a sentence of any length in
chunks of SCORE_CHUNK positions, one chunk and one slice at a time. The logits of one chunk,
score_rows × SCORE_CHUNK × vocabulary floats, dominate (131 MB for 256 rows and 2,000 words):
lower --score_rows for a large vocabulary. The scores are those of the whole batch at once, up
to float32 summation order (tests/test_export.py).
"""
import operator
import os
import re
import tempfile

import tensorflow as tf
from absl import logging as absl_logging

from tfsys.data import chars
from tfsys.errors import UserError

SCORE_CHUNK = 64
# Sentences per slice of a scoring request. Before slicing, one request held the logits of all
# its rows at once: 5,000 PTB sentences took 4.3 GB with a 2,000-word vocabulary, and 20,000
# overflowed a kernel's int32 index and crashed the server (bench/serving_memory.py).
SCORE_ROWS = 256
MAX_GENERATE_WORDS = 1000
TOP_K = 10


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


class LanguageModelServer(tf.Module):
  """The exported object: the model's variables, the vocabulary tables and the signatures."""

  def __init__(self, model, vocab, vocab_asset_path: str, score_rows: int = SCORE_ROWS):
    super().__init__(name="lm_server")
    self.model = model
    self.score_rows = check_score_rows(score_rows)
    config = model.config
    self.char_cnn = config.input == "char_cnn"
    self.max_word_length = config.max_word_length
    self.vocab_size = len(vocab)
    self.eos, self.eos_id, self.unk_id = vocab.eos, vocab.eos_id, vocab.unk_id
    self.vocab_file, self.word_to_id, self.id_to_word = vocab_tables(vocab, vocab_asset_path)
    self.state_sizes = []
    for c, h in model.initial_state(1):
      self.state_sizes += [c.shape[-1], h.shape[-1]]
    self.state_size = sum(self.state_sizes)
    self.score = tf.function(self._score, input_signature=[tf.TensorSpec([None], tf.string)])
    self.generate = tf.function(self._generate, input_signature=[
        tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)])
    self.step = tf.function(self._step, input_signature=[
        tf.TensorSpec([None], tf.string), tf.TensorSpec([None, self.state_size], tf.float32)])
    self.embed = tf.function(self._embed, input_signature=[tf.TensorSpec([None], tf.string)])

  def signatures(self) -> dict:
    return {"serving_default": self.score, "generate": self.generate, "step": self.step,
            "embed": self.embed}

  # ---------------------------------------------------------------- helpers
  def _ids(self, words):
    return tf.cast(self.word_to_id.lookup(words), tf.int32)

  def _pack(self, state):
    return tf.concat([t for pair in state for t in pair], axis=-1)

  def _unpack(self, packed):
    parts = tf.split(packed, self.state_sizes, axis=-1)
    return tuple((parts[2 * k], parts[2 * k + 1]) for k in range(len(parts) // 2))

  def _target_log_probs(self, h, targets, weights):
    """Σ_t weights · log p(targets_t) per row, SCORE_CHUNK positions of logits at a time."""
    w, b = self.model.params["softmax_w"], self.model.params["softmax_b"]
    steps = tf.shape(h)[1]
    chunks = (steps + SCORE_CHUNK - 1) // SCORE_CHUNK

    def body(i, total):
      lo = i * SCORE_CHUNK
      logits = tf.einsum("btp,vp->btv", h[:, lo:lo + SCORE_CHUNK], w) + b
      nll = tf.nn.sparse_softmax_cross_entropy_with_logits(targets[:, lo:lo + SCORE_CHUNK], logits)
      return i + 1, total - tf.reduce_sum(nll * weights[:, lo:lo + SCORE_CHUNK], axis=1)
    # One chunk's logits at a time: a chunk's do not depend on the running total, so with the
    # default parallel_iterations several chunks' logits would be live together.
    _, total = tf.while_loop(lambda i, _: i < chunks, body,
                             (tf.constant(0), tf.zeros([tf.shape(h)[0]])), parallel_iterations=1)
    return total

  # ---------------------------------------------------------------- signatures
  def _score(self, sentences):
    return in_row_slices(self._score_rows, sentences, self.score_rows,
                         {"log_prob": tf.float32, "num_tokens": tf.int32, "perplexity": tf.float32})

  def _score_rows(self, sentences, index):
    del index   # scoring is deterministic: a slice's place in the batch does not matter
    words = tf.strings.split(sentences)                     # ragged [B, None], on whitespace
    ids = tf.ragged.map_flat_values(self._ids, words)
    batch = tf.shape(sentences)[0]
    eos = tf.fill([batch, 1], self.eos_id)
    lengths = tf.cast(ids.row_lengths(), tf.int32) + 1      # the words and the sentence end
    steps = tf.maximum(tf.reduce_max(tf.concat([lengths, [1]], 0)), 1)
    inputs = tf.concat([eos, ids], axis=1).to_tensor(self.eos_id, shape=[batch, steps])
    targets = tf.concat([ids, eos], axis=1).to_tensor(self.eos_id, shape=[batch, steps])
    weights = tf.sequence_mask(lengths, steps, tf.float32)
    h, _ = self.model.hidden(self.model.embed_ids(inputs), self.model.initial_state(batch),
                             training=False)
    log_prob = self._target_log_probs(h, targets, weights)
    return {"log_prob": log_prob, "num_tokens": lengths,
            "perplexity": tf.exp(-log_prob / tf.cast(lengths, tf.float32))}

  def _generate(self, prompt, max_words, temperature, seed):
    check_temperature(temperature)
    count = tf.clip_by_value(max_words, 0, MAX_GENERATE_WORDS)
    model = self.model

    def one(text):
      words = tf.strings.split(text)
      ids = self._ids(words)
      # An empty prompt starts a sentence: the model has seen a sentence end before each one.
      ids = tf.cond(tf.size(ids) > 0, lambda: ids, lambda: tf.constant([self.eos_id]))
      logits, state = model.logits(ids[None, :], model.initial_state(1))
      out = tf.TensorArray(tf.int32, size=count)

      def body(i, last, state, out):
        sampled = tf.random.stateless_categorical(last / tf.maximum(temperature, 1e-6), 1,
                                                  tf.stack([seed, i]))[:, 0]
        greedy = tf.argmax(last, axis=-1)
        nxt = tf.cast(tf.where(temperature > 0, sampled, greedy), tf.int32)
        logits, state = model.logits(tf.reshape(nxt, [1, 1]), state)
        return i + 1, logits[:, -1, :], state, out.write(i, nxt[0])
      _, _, _, out = tf.while_loop(lambda i, *_: i < count, body,
                                   (tf.constant(0), logits[:, -1, :], state, out))
      generated = self.id_to_word.lookup(tf.cast(out.stack(), tf.int64))
      return self._render(tf.concat([words, generated], 0))

    return {"text": tf.map_fn(one, prompt, fn_output_signature=tf.string)}

  def _render(self, words):
    """scripts/sample.py's rendering: words joined by spaces, each sentence end a line break."""
    text = tf.strings.reduce_join(words, separator=" ")
    eos = re.escape(self.eos)
    text = tf.strings.regex_replace(text, f" {eos} ", "\n")
    text = tf.strings.regex_replace(text, f" {eos}", "\n")
    text = tf.strings.regex_replace(text, eos, "\n")
    return tf.strings.strip(text)

  def _step(self, words, state):
    tf.debugging.assert_equal(tf.shape(state), tf.stack([tf.shape(words)[0], self.state_size]),
                              message=f"state must be [batch, {self.state_size}], one row per word")
    # A NaN or infinite state gives all-NaN log_probs and top_words ranked on NaN: refuse it.
    state = tf.debugging.assert_all_finite(
        state, "state must be finite (pass back the state a step returned; zeros start a text)")
    logits, new_state = self.model.logits(self._ids(words)[:, None], self._unpack(state))
    log_probs = tf.nn.log_softmax(logits[:, 0, :])
    top = tf.math.top_k(log_probs, k=min(TOP_K, self.vocab_size))
    return {"log_probs": log_probs, "state": self._pack(new_state),
            "top_words": self.id_to_word.lookup(tf.cast(top.indices, tf.int64)),
            "top_log_probs": top.values}

  def _embed(self, words):
    if self.char_cnn:
      vectors = self.model.embed_chars(chars.encode_words_tf(words, self.max_word_length))
    else:
      vectors = tf.nn.embedding_lookup(self.model.params["word_embedding"], self._ids(words))
    return {"embeddings": vectors}


def next_version(export_dir: str) -> int:
  versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
  return max(versions, default=0) + 1


def export(workdir: str, export_dir: str, score_rows: int = SCORE_ROWS) -> tuple[str, str]:
  """Writes the workdir's newest checkpoint as export_dir/<next version>; returns that
  directory and the checkpoint it holds. score_rows: sentences per slice of a scoring request
  (its memory: the module docstring)."""
  from tfsys.train.evaluate import load_trained
  check_score_rows(score_rows)   # before the minutes of loading a large model
  config, vocab, model, checkpoint = load_trained(workdir)
  try:
    os.makedirs(export_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the export directory {export_dir}: {e.strerror}") from None
  with tempfile.TemporaryDirectory(dir=export_dir, prefix=".tmp-") as tmp:
    server = in_process_server(model, vocab, tmp, config.data.get("max_length", 0), score_rows)
    staging = os.path.join(tmp, "model")
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # one INFO line per renamed graph input
    try:
      tf.saved_model.save(server, staging, signatures=server.signatures())
    finally:
      absl_logging.set_verbosity(verbosity)
    while True:
      target = os.path.join(export_dir, str(next_version(export_dir)))
      try:
        os.rename(staging, target)   # atomic: TF Serving never sees a half-written version
        break
      except OSError:   # another export took this version first: never overwrite it
        if not os.path.exists(target):
          raise
  return target, checkpoint


def load_signatures(saved_model_dir: str) -> dict:
  """The serving signatures of an exported model (scripts use only these with --saved_model)."""
  if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
    hint = ""
    if os.path.isdir(saved_model_dir) and next_version(saved_model_dir) > 1:
      hint = f" (it holds versions: give {saved_model_dir}/<version>)"
    raise UserError(f"no SavedModel in {saved_model_dir}{hint}")
  return tf.saved_model.load(saved_model_dir).signatures


def score_sentences(score, sentences: list[str], batch_size: int = 64) -> dict:
  """Per-sentence scores through a `serving_default`-like function, summed over a text:
  perplexity = exp(-Σ log_prob / Σ num_tokens)."""
  log_prob, tokens = 0.0, 0
  for lo in range(0, len(sentences), batch_size):
    out = score(sentences=tf.constant(sentences[lo:lo + batch_size], tf.string))
    # A sentence VAE's score gives its importance-weighted bound instead (export_vae.py).
    lp = out["log_prob"] if "log_prob" in out else -out["iw_nll"]
    log_prob += float(tf.reduce_sum(tf.cast(lp, tf.float64)))
    tokens += int(tf.reduce_sum(out["num_tokens"]))
  nll = -log_prob / max(tokens, 1)
  return {"loss": nll, "perplexity": float(tf.exp(nll)), "num_tokens": tokens}


def in_process_server(model, vocab, tmp_dir: str, max_length: int = 0,
                      score_rows: int = SCORE_ROWS):
  """The serving module over a model in memory (what export() saves), for the same scores.
  Sentence models (the VAE) get tfsys/export_vae.py's contract; max_length is their
  data.max_length."""
  vocab_path = os.path.join(tmp_dir, "vocab.txt")
  with open(vocab_path, "w", encoding="utf-8") as f:
    f.write("".join(w + "\n" for w in vocab.words))
  if model.data_layout == "sentences":
    from tfsys.export_vae import SentenceVAEServer
    return SentenceVAEServer(model, vocab, vocab_path, max_length, score_rows)
  return LanguageModelServer(model, vocab, vocab_path, score_rows)
