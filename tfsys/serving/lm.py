"""The serving contract of a language model (models/lstm_lm.py), on raw strings.

Everything a client needs runs in the graph: whitespace tokenisation, the vocabulary (an asset
file, one word per line, id = line number) with `<unk>` for unknown words, and the char encoding.

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
`score_rows` at a time (tfsys/serving/common.py), each slice padded to its own longest
sentence, and a sentence of any length in chunks of SCORE_CHUNK positions, one chunk and one
slice at a time. The logits of one chunk, score_rows × SCORE_CHUNK × vocabulary floats,
dominate (131 MB for 256 rows and 2,000 words): lower --score_rows for a large vocabulary. The
scores are those of the whole batch at once, up to float32 summation order (tests/test_export.py).
"""
import re

import tensorflow as tf

from models.layers.sampling import next_ids
from tfsys.errors import UserError
from tfsys.serving.common import (SCORE_ROWS, Server, check_temperature, in_row_slices,
                                  sentence_batch)

SCORE_CHUNK = 64
MAX_GENERATE_WORDS = 1000
TOP_K = 10


class LanguageModelServer(Server):
  """The exported object: the model's variables, the vocabulary tables and the signatures."""

  def __init__(self, model, vocab, vocab_asset_path: str, max_length: int = 0,
               score_rows: int = SCORE_ROWS):
    """max_length: unused (a language model scores sentences of any length)."""
    del max_length
    super().__init__("lm_server", model, vocab, vocab_asset_path, score_rows)
    self.vocab_size = len(vocab)
    self.eos, self.eos_id, self.unk_id = vocab.eos, vocab.eos_id, vocab.unk_id
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
  def _pack(self, state):
    return tf.concat([t for pair in state for t in pair], axis=-1)

  def _unpack(self, packed):
    parts = tf.split(packed, self.state_sizes, axis=-1)
    return tuple((parts[2 * k], parts[2 * k + 1]) for k in range(len(parts) // 2))

  def _target_log_probs(self, h, targets, weights):
    """Σ_t weights · log p(targets_t) per row, SCORE_CHUNK positions of logits at a time."""
    steps = tf.shape(h)[1]
    chunks = (steps + SCORE_CHUNK - 1) // SCORE_CHUNK

    def body(i, total):
      lo = i * SCORE_CHUNK
      logits = self.model.output_logits(h[:, lo:lo + SCORE_CHUNK])
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
    batch, _ = sentence_batch(sentences, self._ids, self.eos_id)
    lengths = batch["lengths"]
    h, _ = self.model.hidden(self.model.embed_ids(batch["inputs"]),
                             self.model.initial_state(tf.shape(sentences)[0]), training=False)
    log_prob = self._target_log_probs(h, batch["targets"], batch["weights"])
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
        nxt = next_ids(last, temperature, tf.stack([seed, i]))
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
    return {"embeddings": self.model.embed_words(words, self._ids)}

  # ---------------------------------------------------------------- the client's side
  @classmethod
  def follows(cls, signatures) -> bool:
    return "generate" in signatures

  @staticmethod
  def log_probs(outputs):
    return outputs["log_prob"]

  @classmethod
  def sample_text(cls, signatures, prompt: str, num_words: int, num_sentences: int,
                  temperature: float, seed: int) -> list[str]:
    """The prompt and num_words words after it, as one text (num_sentences is the sentence
    models')."""
    del num_sentences
    if num_words > MAX_GENERATE_WORDS:
      # The signature would cut the text there without saying so; a checkpoint has no limit.
      raise UserError(f"--num_words={num_words} is more than a SavedModel generates "
                      f"({MAX_GENERATE_WORDS}): lower it, or sample from the --workdir")
    out = signatures["generate"](prompt=tf.constant([prompt]), max_words=tf.constant(num_words),
                                 temperature=tf.constant(temperature, tf.float32),
                                 seed=tf.constant(seed))
    return [out["text"][0].numpy().decode("utf-8", errors="replace")]
