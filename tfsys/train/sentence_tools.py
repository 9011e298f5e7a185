"""What one does with a trained sentence VAE (Bowman et al. 2016 §4), on text in and text out:
sample from the prior, reconstruct, homotopy between two sentences, impute missing final words.

Sentences are whitespace-tokenised like the corpus; words outside the vocabulary read as <unk>;
a sentence longer than max_length words is cut to its first max_length words (and `truncated`
says which were). Decoding is greedy (temperature 0) unless a temperature is given.
"""
import numpy as np
import tensorflow as tf
from absl import logging

from models.sentence_vae import words_of
from tfsys.data.sentences import batch_of
from tfsys.errors import UserError


class SentenceCoder:

  def __init__(self, model, vocab, max_length: int):
    self.model, self.vocab, self.max_length = model, vocab, max_length
    self.latent_dim = model.latent_dim
    self._encode = tf.function(model.encode, reduce_retracing=True)
    self._decode = tf.function(self._decode_fn, reduce_retracing=True)
    self._continue = tf.function(self._continue_fn, reduce_retracing=True)

  # ---------------------------------------------------------------- graph pieces
  def _decode_fn(self, z, max_words, temperature, seed):
    batch = tf.shape(z)[0]
    first = tf.fill([batch], self.model.eos_id)
    return self.model.decode(z, self.model.decoder_state(z, batch), first, max_words,
                             temperature, seed)

  def _continue_fn(self, z, prefix, max_words, temperature, seed):
    """Words after the prefix ids [1, P] (P >= 1) under z [1, D]."""
    model = self.model
    inputs = tf.concat([[[model.eos_id]], prefix[:, :-1]], axis=1)
    _, state = model.decode_hidden(inputs, model.decoder_state(z, 1), z, training=False)
    return model.decode(z, state, prefix[:, -1], max_words, temperature, seed)

  # ---------------------------------------------------------------- text <-> ids
  def ids(self, sentences: list[str]) -> tuple[list[np.ndarray], list[bool]]:
    out, truncated = [], []
    for s in sentences:
      words = s.split()
      truncated.append(len(words) > self.max_length)
      out.append(self.vocab.encode(words[:self.max_length]))
    if any(truncated):
      logging.warning("%d sentence(s) longer than %d words (the model's data.max_length) were "
                      "cut to their first %d words", sum(truncated), self.max_length,
                      self.max_length)
    return out, truncated

  def texts(self, ids) -> list[str]:
    return [" ".join(w) for w in words_of(ids, self.vocab.words, self.model.eos_id)]

  def posterior(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """μ and log σ² [B, D] for a padded batch (tfsys/data/sentences.py's layout)."""
    mean, logvar = self._encode(tf.constant(batch["targets"]), tf.constant(batch["lengths"]))
    return mean.numpy(), logvar.numpy()

  # ---------------------------------------------------------------- tools
  def encode(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and log variance [B, D] of each sentence."""
    self._need_latent("encode")
    ids, _ = self.ids(sentences)
    return self.posterior(batch_of(ids, self.model.eos_id))

  def decode(self, z: np.ndarray, temperature: float = 0.0, seed: int = 0) -> list[str]:
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise UserError(f"z must have shape [batch, {self.latent_dim}], got {list(z.shape)}")
    if temperature < 0:
      raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    ids = self._decode(tf.constant(z), tf.constant(self.max_length), tf.constant(temperature),
                       tf.constant([seed, 0], tf.int32))
    return self.texts(ids.numpy())

  def sample_prior(self, count: int, seed: int = 0, temperature: float = 0.0) -> list[str]:
    """Sentences decoded from z ~ N(0, I), drawn as the exported `sample` signature draws it
    (so a checkpoint and its SavedModel give the same sentences for the same seed)."""
    if count < 0:
      raise UserError(f"count must be >= 0, got {count}")
    z = tf.random.stateless_normal([count, self.latent_dim], tf.constant([seed, 1], tf.int32))
    return self.decode(z.numpy(), temperature, seed)

  def reconstruct(self, sentences: list[str], temperature: float = 0.0, seed: int = 0
                  ) -> list[str]:
    """Each sentence decoded from its posterior mean."""
    mean, _ = self.encode(sentences)
    return self.decode(mean, temperature, seed)

  def homotopy(self, first: str, second: str, steps: int) -> list[str]:
    """Bowman §4.3: greedy decodings along the line between the two sentences' posterior means,
    at `steps` evenly spaced points, both ends included."""
    if steps < 2:
      raise UserError(f"a homotopy needs at least 2 steps (both ends), got {steps}")
    mean, _ = self.encode([first, second])
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return self.decode((1 - t) * mean[0] + t * mean[1])

  def impute(self, sentence: str, num_missing: int, iterations: int = 3) -> str:
    """Bowman §4.1: fills in the last `num_missing` words of a sentence. A first guess is the
    decoder's greedy continuation of the known words from the prior mean; then, `iterations`
    times, z is the posterior mean of the known words plus the guess, and the guess is the
    greedy continuation under that z. Returns the known words and the imputed ending."""
    self._need_latent("impute")
    words = sentence.split()[:self.max_length]
    if not 0 < num_missing < len(words):
      raise UserError(f"num_missing must be between 1 and the sentence's length - 1 "
                      f"({len(words) - 1}), got {num_missing}")
    known = words[:len(words) - num_missing]
    prefix = tf.constant(self.vocab.encode(known)[None, :])
    z = np.zeros([1, self.latent_dim], np.float32)
    guess = ""
    for _ in range(iterations + 1):
      ids = self._continue(tf.constant(z), prefix, tf.constant(self.max_length - len(known)),
                           tf.constant(0.0), tf.constant([0, 0], tf.int32))
      guess = self.texts(ids.numpy())[0]
      z, _ = self.encode([" ".join(known + guess.split())])
    return " ".join(known + guess.split())

  def _need_latent(self, what: str) -> None:
    if not self.latent_dim:
      raise UserError(f"{what} needs a latent code: this model is an RNNLM (model.latent_dim = 0)")
