"""Perplexity of a token stream under a model's full softmax, and text generation.

Perplexity = exp(Σ NLL / N) over every token of the text after the first, sentence ends
included (the standard PTB convention); the text is laid out in `batch_size` rows that each
start from a zero state (tfsys.data.eval_windows).
"""
import math
import os

import numpy as np
import tensorflow as tf

import models
from models.layers.sampling import next_ids
from tfsys.data import VOCAB_FILE, OneBillionWord, PennTreebank, TextCorpus, Vocabulary, eval_windows
from tfsys.errors import UserError
from tfsys.train.checkpoint import restore_for_inference
from tfsys.train.step import reset_state
from tfsys.train.workdir import load_config

CORPORA = {"ptb": PennTreebank, "lm1b": OneBillionWord, "text": TextCorpus}


def perplexity(nll_per_token: float) -> float:
  """exp(NLL), capped at exp(80) so that summaries (float32) never overflow on a diverging run."""
  return math.exp(min(nll_per_token, 80.0))


class Evaluator:
  """Compiles one eval step for a model and runs it over whole texts."""

  def __init__(self, model, batch_size: int, unroll: int):
    self.model, self.batch_size, self.unroll = model, batch_size, unroll
    self._step = tf.function(self._step_fn)

  def _step_fn(self, batch, state):
    state = reset_state(state, batch["reset"])
    _, metrics, state = self.model.loss(batch, state, training=False)
    return metrics["nll_sum"], metrics["num_tokens"], state

  def perplexity(self, ids: np.ndarray, max_tokens: int = 0) -> dict:
    if max_tokens:
      ids = ids[:max_tokens + 1]
    nll, count, state = 0.0, 0.0, None
    for window in eval_windows(ids, self.batch_size, self.unroll):
      if state is None:
        state = self.model.initial_state(window["inputs"].shape[0])
      batch = {k: tf.constant(v) for k, v in window.items()}
      n, c, state = self._step(batch, state)
      nll += float(n)
      count += float(c)
    mean = nll / max(count, 1.0)
    return {"loss": mean, "perplexity": perplexity(mean), "num_tokens": int(count)}


class Sampler:
  """Generates words after a prompt, one full-softmax step at a time, state carried."""

  def __init__(self, model, vocab: Vocabulary):
    self.model, self.vocab = model, vocab
    spec_state = tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape, s.dtype),
                                       model.initial_state(1))
    self._step = tf.function(self._step_fn, input_signature=[
        tf.TensorSpec([1, None], tf.int32), spec_state, tf.TensorSpec([], tf.float32),
        tf.TensorSpec([2], tf.int32)])

  def _step_fn(self, ids, state, temperature, seed):
    logits, state = self.model.logits(ids, state)
    return next_ids(logits[:, -1, :], temperature, seed), state

  def generate(self, prompt: str, num_words: int, temperature: float = 1.0, seed: int = 0
               ) -> list[str]:
    """The generated words (not the prompt). temperature 0 = greedy; the same seed, the same text."""
    if temperature < 0:
      raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if num_words < 0:
      raise UserError(f"number of words must be >= 0, got {num_words}")
    words = prompt.split()
    # An empty prompt starts a sentence: the model has seen a sentence end before every sentence.
    ids = self.vocab.encode(words) if words else np.array([self.vocab.eos_id], np.int32)
    state = self.model.initial_state(1)
    current = tf.constant(ids[None, :])
    out = []
    for i in range(num_words):
      nxt, state = self._step(current, state, tf.constant(float(temperature)),
                              tf.constant([seed, i], tf.int32))
      index = int(nxt[0])
      if not 0 <= index < len(self.vocab):  # what tf.random sampling returns for NaN logits
        raise UserError(f"the model's next-word distribution is not finite at word {i + 1}: "
                        "the checkpoint holds diverged (NaN or infinite) weights")
      out.append(self.vocab.words[index])
      current = tf.reshape(nxt, [1, 1])
    return out


def render(words: list[str], eos: str) -> str:
  """Words as text, a line break at each sentence end."""
  return " ".join(words).replace(f" {eos} ", "\n").replace(f" {eos}", "\n").replace(eos, "\n").strip()


def load_trained(workdir: str):
  """(config, vocab, model, checkpoint path) of a workdir's newest checkpoint, for inference."""
  config = load_config(workdir)
  corpus_cls = CORPORA.get(config.data.corpus, TextCorpus)
  vocab = Vocabulary.load(os.path.join(workdir, VOCAB_FILE), unk=corpus_cls.unk, eos=corpus_cls.eos)
  model = models.build(config.model, vocab.words, seed=config.seed)
  path = restore_for_inference(workdir, model=model)
  return config, vocab, model, path
