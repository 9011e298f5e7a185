"""The serving contract of a sentence VAE (models/sentence_vae.py), on raw strings.

Written by tfsys/serving's `export()` like the language models' (same versioned layout, the
vocabulary as an asset); everything runs in the graph. Sentences are split on whitespace, words
outside the vocabulary read as <unk>, and a sentence longer than the model's max_length words
(data.max_length) is cut to its first max_length words, which `truncated` reports.

  serving_default, score
           sentences string [B]
           -> iw_nll float [B]       -log p(x) bounded with IW_SAMPLES importance samples
                                     (Burda et al. 2016): what is compared with an RNNLM
              elbo float [B]         the evidence lower bound, from the same samples (<= -iw_nll)
              kl float [B]           KL(q(z|x) || N(0, I)), closed form
              reconstruction_nll float [B]  E_q[-log p(x|z)] over the same samples
              num_tokens int32 [B]   words + 1 (the sentence end)
              perplexity float [B]   exp(iw_nll / num_tokens)
              truncated bool [B]
  encode   sentences string [B] -> mean float [B, D], log_variance float [B, D], truncated bool [B]
  decode   z float [B, D], temperature float [], seed int32 [] -> text string [B]
           (temperature 0: greedy, the seed unused; a z of another size is a request error)
  sample   count int32 [], temperature float [], seed int32 [] -> text string [count], z [count, D]
           sentences from z ~ N(0, I) drawn from the seed; the same seed, the same sentences
  interpolate  first string [], second string [], steps int32 []
           -> text string [steps], z float [steps, D]: greedy decodings along the line between
           the two sentences' posterior means, both ends included (Bowman et al. §4.3)

An RNNLM (latent_dim 0) exports serving_default/score (iw_nll is then its exact NLL and kl 0)
and sample (temperature sampling from the empty state); it has no code to encode or decode.
A generated sentence has at most max_length words.

Request errors (InvalidArgumentError naming the input): a temperature that is negative, NaN or
infinite; a z of another size, or with a NaN or infinite entry (it would decode to whatever
argmax makes of NaN logits); a negative count; fewer than 2 steps.

A scoring request is scored `score_rows` sentences at a time, as the language models' are
(tfsys/serving/common.py): its memory does not grow with its size. The importance samples are drawn
per slice: slice j from the seed (0, j × IW_SAMPLES), so a request of at most score_rows
sentences draws exactly what it drew before slicing, and every slice draws its own.
"""
import tensorflow as tf

from tfsys.serving.common import (SCORE_ROWS, Server, check_temperature, in_row_slices,
                                  sentence_batch)

IW_SAMPLES = 100   # importance samples of the exported bound (eval.iw_samples is for training)


class SentenceVAEServer(Server):

  def __init__(self, model, vocab, vocab_asset_path: str, max_length: int,
               score_rows: int = SCORE_ROWS):
    """max_length: the model's data.max_length; longer sentences are cut to it."""
    super().__init__("vae_server", model, vocab, vocab_asset_path, score_rows)
    self.max_length = max_length
    self.latent_dim = model.latent_dim
    self.eos_id = vocab.eos_id
    strings = tf.TensorSpec([None], tf.string)
    scalar = lambda dtype: tf.TensorSpec([], dtype)  # noqa: E731
    self.score = tf.function(self._score, input_signature=[strings])
    self.sample = tf.function(self._sample, input_signature=[
        scalar(tf.int32), scalar(tf.float32), scalar(tf.int32)])
    if self.latent_dim:
      self.encode = tf.function(self._encode, input_signature=[strings])
      self.decode = tf.function(self._decode, input_signature=[
          tf.TensorSpec([None, None], tf.float32), scalar(tf.float32), scalar(tf.int32)])
      self.interpolate = tf.function(self._interpolate, input_signature=[
          scalar(tf.string), scalar(tf.string), scalar(tf.int32)])

  def signatures(self) -> dict:
    out = {"serving_default": self.score, "score": self.score, "sample": self.sample}
    if self.latent_dim:
      out.update(encode=self.encode, decode=self.decode, interpolate=self.interpolate)
    return out

  # ---------------------------------------------------------------- helpers
  def _batch(self, sentences):
    """Raw sentences -> the model's padded batch (tfsys/data/sentences.py's layout) and which
    sentences were cut to max_length words."""
    return sentence_batch(sentences, self._ids, self.eos_id, self.max_length)

  def _text(self, ids):
    """Generated ids [B, L] -> one string per row: the words before the first <eos>."""
    before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, self.eos_id), tf.int32), axis=1), 0)
    kept = tf.ragged.boolean_mask(ids, before_end)
    words = tf.ragged.map_flat_values(
        lambda i: self.id_to_word.lookup(tf.cast(i, tf.int64)), kept)
    return tf.strings.reduce_join(words, axis=1, separator=" ")

  def _generate(self, z, temperature, seed):
    check_temperature(temperature)
    batch = tf.shape(z)[0]
    state = self.model.decoder_state(z, batch)
    ids = self.model.decode(z, state, tf.fill([batch], self.eos_id), self.max_length,
                            temperature, tf.stack([seed, 0]))
    return self._text(ids)

  # ---------------------------------------------------------------- signatures
  def _score(self, sentences):
    return in_row_slices(self._score_rows, sentences, self.score_rows, {
        "iw_nll": tf.float32, "elbo": tf.float32, "kl": tf.float32,
        "reconstruction_nll": tf.float32, "num_tokens": tf.int32, "perplexity": tf.float32,
        "truncated": tf.bool})

  def _score_rows(self, sentences, index):
    batch, truncated = self._batch(sentences)
    samples = IW_SAMPLES if self.latent_dim else 1
    # Sample i of slice j uses the seed (0, j × samples + i): slices never share noise, and
    # slice 0 draws what the whole batch drew before scoring was sliced.
    out = self.model.evaluate_batch(batch, samples, tf.stack([0, index * samples]))
    iw_nll = -out["log_px"]
    tokens = batch["lengths"]
    return {"iw_nll": iw_nll, "elbo": out["elbo"], "kl": out["kl"],
            "reconstruction_nll": out["rec_nll"], "num_tokens": tokens,
            "perplexity": tf.exp(iw_nll / tf.cast(tokens, tf.float32)), "truncated": truncated}

  def _encode(self, sentences):
    batch, truncated = self._batch(sentences)
    mean, logvar = self.model.encode(batch["targets"], batch["lengths"])
    return {"mean": mean, "log_variance": logvar, "truncated": truncated}

  def _decode(self, z, temperature, seed):
    check = tf.debugging.assert_equal(tf.shape(z)[1], self.latent_dim,
                                      message=f"z must be [batch, {self.latent_dim}]")
    with tf.control_dependencies([check]):   # this message, before ensure_shape's own
      z = tf.ensure_shape(tf.identity(z), [None, self.latent_dim])
    z = tf.debugging.assert_all_finite(z, "z must be finite")
    return {"text": self._generate(z, temperature, seed)}

  def _sample(self, count, temperature, seed):
    tf.debugging.assert_non_negative(count, message="count must be >= 0")
    z = tf.random.stateless_normal([count, self.latent_dim], tf.stack([seed, 1]))
    return {"text": self._generate(z, temperature, seed), "z": z}

  def _interpolate(self, first, second, steps):
    tf.debugging.assert_greater_equal(steps, 2, message="steps must be >= 2 (both ends)")
    batch, _ = self._batch(tf.stack([first, second]))
    mean, _ = self.model.encode(batch["targets"], batch["lengths"])
    t = tf.linspace(0.0, 1.0, steps)[:, None]
    z = (1.0 - t) * mean[0] + t * mean[1]
    return {"text": self._generate(z, tf.constant(0.0), tf.constant(0)), "z": z}

  # ---------------------------------------------------------------- the client's side
  @classmethod
  def follows(cls, signatures) -> bool:
    return "sample" in signatures

  @staticmethod
  def log_probs(outputs):
    return -outputs["iw_nll"]   # the importance-weighted bound on log p(x)

  @classmethod
  def sample_text(cls, signatures, prompt: str, num_words: int, num_sentences: int,
                  temperature: float, seed: int) -> list[str]:
    """num_sentences sentences from the prior (prompt and num_words are the language models')."""
    del prompt, num_words
    out = signatures["sample"](count=tf.constant(num_sentences),
                               temperature=tf.constant(temperature, tf.float32),
                               seed=tf.constant(seed))
    return [text.decode("utf-8", errors="replace") for text in out["text"].numpy()]
