"""What the one training loop and the scripts need to know about a model's data: its training
stream, how it is evaluated, what its samples are. `make(config, corpus, vocab)` makes the task
that the registry (models/registry.py) names for the config's model kind: the loop, the
parameter-server drivers and the checkpoints are the same for every kind.

  StreamTask    token windows of one stream, LSTM state carried (the language models):
                validation/test perplexity of the whole text, samples generated after a
                sentence end
  SentenceTask  whole sentences in length-bucketed batches (the sentence VAE and its RNNLM):
                the importance-weighted bound (perplexity and NLL per sentence), the ELBO and
                its reconstruction and KL terms, active units and mutual information; samples
                from the prior and reconstructions of validation sentences

What a task offers (both classes, `Task` holds what they share):
  training     words_per_step, per_token_scale, stream(rows, seed), bind(model)
  evaluation   evaluate(split) -> {'loss', 'perplexity', 'num_tokens', ...},
               train_figures() -> train/ scalars, samples(step) -> texts
  the scripts  evaluate_ids(ids), evaluate_lines(lines, per_sentence), sample_text(prompt,
               num_words, num_sentences, temperature, seed) on a trained model (for_model)
  output       summary(result, prefix) -> the figures beyond perplexity, in words ('' if none)
"""
import functools
import math

import numpy as np
import tensorflow as tf

import models
from tfsys import data
from tfsys.data.sentences import SentenceBatches, eval_batches, split_sentences
from tfsys.errors import UserError
from tfsys.train.evaluate import Evaluator, Sampler, perplexity, render

# Active units (Burda et al. 2016 §5.2): a latent dimension whose posterior mean varies across
# sentences with variance above this counts as used.
ACTIVE_UNIT_THRESHOLD = 0.01
MI_SENTENCES = 1000   # sentences the mutual-information estimate aggregates the posterior over


def make(config, corpus, vocab):
  """The task of the config's model kind, for training (run.py)."""
  return models.kind(config.model).task_class()(config, corpus, vocab)


def for_model(config, vocab, model, corpus=None):
  """The task of a trained model, bound to it, for the scripts (scripts/evaluate.py, sample.py).
  corpus: only what evaluate(split) reads; evaluate_ids and evaluate_lines need none."""
  task = make(config, corpus, vocab)
  task.bind(model)
  return task


class Task:
  """What the tasks share (the module docstring lists what a task offers)."""

  def train_figures(self) -> dict:
    return {}

  @classmethod
  def summary(cls, result: dict, prefix: str = "") -> str:
    """The evaluation figures beyond loss, perplexity and num_tokens, in words, for the log and
    the scripts ('' if none). prefix: what the keys carry (results.json's 'test_')."""
    del result, prefix
    return ""


class StreamTask(Task):
  """Language modelling of a token stream (tfsys/data/pipeline.py windows)."""

  def __init__(self, config, corpus, vocab):
    self.config, self.corpus, self.vocab = config, corpus, vocab
    for name in ("batch_size", "unroll"):
      if config.train[name] <= 0:
        raise UserError(f"--config.train.{name} must be positive, got {config.train[name]}")
    self.words_per_step = config.train.batch_size * config.train.unroll
    # loss_per="sequence": the loss summed over the unrolled steps (Zaremba et al., Kim et al.).
    self.per_token_scale = float(config.train.unroll) if config.optim.loss_per == "sequence" else 1.0

  def stream(self, rows: int, seed: int):
    return data.train_stream(self.config.data, self.corpus, self.vocab, rows,
                             self.config.train.unroll, seed)

  def bind(self, model) -> None:
    self.model = model
    self.evaluator = Evaluator(model, self.config.eval.batch_size, self.config.train.unroll)
    self.sampler = Sampler(model, self.vocab)

  def evaluate(self, split: str) -> dict:
    """{'loss': NLL per token, 'perplexity', 'num_tokens'} of a whole split."""
    return self.evaluator.perplexity(self.corpus.token_ids(split, self.vocab),
                                     self.config.eval.max_tokens)

  def samples(self, step: int) -> list[str]:
    e = self.config.eval
    return [render(self.sampler.generate("", e.sample_words, e.temperature, seed=step * 100 + k),
                   self.vocab.eos) for k in range(e.num_samples)]

  # ---------------------------------------------------------------- the scripts
  def evaluate_ids(self, ids: np.ndarray) -> dict:
    """Perplexity of a token stream (a sentence end after every sentence), laid out in
    eval.batch_size rows that each start from a zero state, the state carried from sentence to
    sentence (the corpora's convention)."""
    return self.evaluator.perplexity(ids)

  def evaluate_lines(self, lines: list[str], per_sentence: bool = False) -> dict:
    """Perplexity of tokenised lines, a sentence end after each: as one stream, or with
    per_sentence each line on its own from a zero state after a sentence end, as the
    SavedModel's serving_default scores it (its serving module, in process)."""
    if per_sentence:
      import tempfile
      from tfsys.serving import in_process_server
      with tempfile.TemporaryDirectory() as tmp:
        server = in_process_server(self.model, self.vocab, tmp)
        return server.score_text(server.score, lines)
    eos = np.int32(self.vocab.eos_id)
    return self.evaluate_ids(np.concatenate([np.append(self.vocab.encode(line.split()), eos)
                                             for line in lines]))

  def sample_text(self, prompt: str, num_words: int, num_sentences: int, temperature: float,
                  seed: int) -> list[str]:
    """The prompt and num_words words generated after it, as one text (num_sentences is the
    sentence models')."""
    del num_sentences
    words = self.sampler.generate(prompt, num_words, temperature, seed)
    return [render(prompt.split() + words, self.vocab.eos)]


class SentenceTask(Task):
  """Whole sentences (tfsys/data/sentences.py) for sentence models (models/sentence_vae.py)."""

  def __init__(self, config, corpus, vocab):
    self.config, self.corpus, self.vocab = config, corpus, vocab
    if config.optim.loss_per != "token":
      raise UserError("sentence models minimise the loss per token: set --config.optim.loss_per=token")
    for name, value in (("data.max_length", config.data.max_length),
                        ("eval.iw_samples", config.eval.iw_samples),
                        ("train.batch_size", config.train.batch_size)):
      if value <= 0:
        raise UserError(f"--config.{name} must be positive, got {value}")
    self._sentences = {}
    self.per_token_scale = 1.0

  @functools.cached_property
  def words_per_step(self) -> float:
    """Tokens per step on average: the training sentences' mean length (read when first asked:
    the scripts evaluate texts without the training split)."""
    train = self.sentences("train")
    tokens_per_sentence = sum(len(s) + 1 for s in train) / max(len(train), 1)
    return tokens_per_sentence * self.config.train.batch_size

  def sentences(self, split: str) -> list[np.ndarray]:
    if split not in self._sentences:
      ids = self.corpus.token_ids(split, self.vocab)
      self._sentences[split] = split_sentences(ids, self.vocab.eos_id)
    return self._sentences[split]

  def stream(self, rows: int, seed: int):
    d = self.config.data
    return SentenceBatches(self.sentences("train"), rows, d.max_length, self.vocab.eos_id,
                           d.shuffle, seed)

  def bind(self, model) -> None:
    from tfsys.train.sentence_tools import SentenceCoder
    self.model = model
    self._evaluate_batch = tf.function(model.evaluate_batch, reduce_retracing=True)
    self.coder = SentenceCoder(model, self.vocab, self.config.data.max_length)

  def evaluate(self, split: str) -> dict:
    """The importance-weighted bound and the ELBO over a split's sentences (whole, however long).

    perplexity = exp(-Σ log p̂(x) / Σ tokens) with p̂ the k-sample bound (Burda et al. 2016):
    the figure compared with the RNNLM, whose bound is its exact likelihood. nll is the same per
    sentence (Bowman et al. Table 2's unit); elbo* are the ELBO's, from the same samples.
    """
    sentences = self.sentences(split)
    if split == "valid" and self.config.eval.max_sentences:   # periodic checks; test: whole
      sentences = sentences[:self.config.eval.max_sentences]
    return self._evaluate(sentences)

  def _evaluate(self, sentences: list[np.ndarray]) -> dict:
    e = self.config.eval
    return evaluate_sentences(self._evaluate_batch, self.model.latent_dim, sentences,
                              self.vocab.eos_id, e.batch_size, e.iw_samples, self.config.seed)

  def train_figures(self) -> dict:
    """Active units and mutual information on the first MI_SENTENCES training sentences (the
    posterior only: cheap), for the train/ run next to the validation figures."""
    if not self.model.latent_dim:
      return {}
    means, logvars = [], []
    sentences = self.sentences("train")[:MI_SENTENCES]
    for batch in eval_batches(sentences, self.config.eval.batch_size, self.vocab.eos_id):
      mean, logvar = self.coder.posterior(batch)
      means.append(mean)
      logvars.append(logvar)
    mean, logvar = np.concatenate(means), np.concatenate(logvars)
    return {"train/active_units": active_units(mean),
            "train/mutual_info": mutual_information(mean, logvar, self.config.seed)}

  def samples(self, step: int) -> list[str]:
    """Sentences from the prior (greedy from z ~ N(0, I), Bowman §4; the RNNLM samples at
    eval.temperature) and reconstructions of the first validation sentences of 5-20 words."""
    e = self.config.eval
    temperature = 0.0 if self.model.latent_dim else e.temperature
    out = [f"prior: {s}" for s in self.coder.sample_prior(e.num_samples, seed=step,
                                                          temperature=temperature)]
    if self.model.latent_dim:
      valid = [s for s in self.sentences("valid") if 5 <= len(s) <= 20][:e.num_samples]
      texts = [" ".join(self.vocab.decode(s)) for s in valid]
      out += [f"reconstruct: {t} => {r}" for t, r in zip(texts, self.coder.reconstruct(texts))]
    return out

  # ---------------------------------------------------------------- the scripts
  def evaluate_ids(self, ids: np.ndarray) -> dict:
    """evaluate()'s figures for the sentences of a token stream (a sentence end after each)."""
    return self._evaluate(split_sentences(ids, self.vocab.eos_id))

  def evaluate_lines(self, lines: list[str], per_sentence: bool = False) -> dict:
    """evaluate()'s figures for tokenised lines, one sentence each (every sentence is scored on
    its own anyway: per_sentence changes nothing)."""
    del per_sentence
    return self._evaluate([self.vocab.encode(line.split()) for line in lines])

  def sample_text(self, prompt: str, num_words: int, num_sentences: int, temperature: float,
                  seed: int) -> list[str]:
    """num_sentences sentences decoded from z ~ N(0, I) drawn from the seed (prompt and
    num_words are the language models')."""
    del prompt, num_words
    return self.coder.sample_prior(num_sentences, seed, temperature)

  # The figures summary() puts in words, each in results under its name (with the prefix).
  SUMMARY_KEYS = ("nll", "iw_samples", "elbo", "reconstruction_nll", "kl", "active_units",
                  "mutual_info")

  @classmethod
  def summary(cls, result: dict, prefix: str = "") -> str:
    """The bound per sentence (Bowman et al. Table 2's unit), the ELBO and its two terms, and
    what z carries; '' when the bound was not finite (evaluate then gives perplexity alone)."""
    if not all(prefix + k in result for k in cls.SUMMARY_KEYS):
      return ""
    r = {k: result[prefix + k] for k in cls.SUMMARY_KEYS}
    return (f"NLL {r['nll']:.2f} per sentence (importance-weighted bound, {r['iw_samples']} "
            f"samples), ELBO {r['elbo']:.2f} (reconstruction NLL {r['reconstruction_nll']:.2f}, "
            f"KL {r['kl']:.2f}), active units {r['active_units']}, mutual information "
            f"{r['mutual_info']:.3f}")


def active_units(mean: np.ndarray) -> int:
  """Latent dimensions whose posterior mean's variance across sentences exceeds the threshold."""
  if not mean.size or len(mean) < 2:
    return 0
  return int((mean.var(axis=0) > ACTIVE_UNIT_THRESHOLD).sum())


def mutual_information(mean: np.ndarray, logvar: np.ndarray, seed: int = 0) -> float:
  """I(x; z) under q(z|x) and the empirical sentences (Hoffman & Johnson 2016; the estimator
  of He et al. 2019 §4.2): E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)], with the aggregate
  posterior q(z) = (1/N) Σ_j q(z|x_j) over the same N sentences and one z_i ~ q(z|x_i) each."""
  n, d = mean.shape
  if n < 2 or d == 0:
    return 0.0
  mean, logvar = mean.astype(np.float64), logvar.astype(np.float64)
  std = np.exp(0.5 * logvar)
  z = mean + std * np.random.default_rng(seed).standard_normal(mean.shape)
  neg_entropy = np.mean(-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(axis=1))
  log_qz = np.empty(n)
  for lo in range(0, n, 100):               # [100, N, D] at a time
    diff = (z[lo:lo + 100, None, :] - mean[None]) / std[None]
    log_dens = -0.5 * (diff ** 2 + math.log(2 * math.pi) + logvar[None]).sum(-1)   # [b, N]
    top = log_dens.max(axis=1, keepdims=True)
    log_qz[lo:lo + 100] = (top[:, 0] + np.log(np.exp(log_dens - top).sum(axis=1))) - math.log(n)
  return float(neg_entropy - log_qz.mean())


def evaluate_sentences(evaluate_batch, latent_dim: int, sentences: list[np.ndarray], eos_id: int,
                       batch_size: int, iw_samples: int, seed: int = 0) -> dict:
  """SentenceTask.evaluate's figures for any list of sentences (word ids without <eos>);
  evaluate_batch is the model's evaluate_batch (in a tf.function)."""
  k = iw_samples if latent_dim else 1
  log_px = elbo = rec = kl = tokens = 0.0
  means, logvars = [], []
  for j, batch in enumerate(eval_batches(sentences, batch_size, eos_id)):
    out = evaluate_batch({key: tf.constant(v) for key, v in batch.items()},
                         tf.constant(k), tf.constant([seed, j * k], tf.int32))
    log_px += float(tf.reduce_sum(out["log_px"]))
    elbo += float(tf.reduce_sum(out["elbo"]))
    rec += float(tf.reduce_sum(out["rec_nll"]))
    kl += float(tf.reduce_sum(out["kl"]))
    tokens += float(batch["weights"].sum())
    means.append(out["mean"].numpy())
    logvars.append(out["logvar"].numpy())
  n = len(sentences)
  if not n:
    raise UserError("no sentences to evaluate")
  if not math.isfinite(log_px):
    return {"loss": float("nan"), "perplexity": float("nan"), "num_tokens": int(tokens)}
  mean, logvar = np.concatenate(means), np.concatenate(logvars)
  return {"loss": -log_px / tokens, "perplexity": perplexity(-log_px / tokens),
          "num_tokens": int(tokens), "num_sentences": n, "nll": -log_px / n,
          "elbo": elbo / n, "reconstruction_nll": rec / n, "kl": kl / n,
          "elbo_perplexity": perplexity(-elbo / tokens),
          "active_units": active_units(mean),
          "mutual_info": mutual_information(mean[:MI_SENTENCES], logvar[:MI_SENTENCES], seed),
          "iw_samples": k}
