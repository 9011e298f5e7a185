"""The sentence VAE of Bowman et al. 2016 ("Generating Sentences from a Continuous Space"), and
its RNNLM baseline (the same decoder with no latent code: `latent_dim = 0`).

    encoder   LSTM over the sentence's words and <eos>; its last output h gives
              q(z|x) = N(μ, diag σ²) with [μ, log σ²] = h W + b              (Bowman §3)
    decoder   LSTM started from z: the initial (c, h) of every layer are a linear map of z
              (h through tanh), and with `feed_z` z is also appended to every input (§3.1)
    loss      -ELBO = E_q[-log p(x|z)] + β·KL(q(z|x) || N(0, I)), one reparameterised sample

Posterior collapse (the KL going to 0 and the decoder ignoring z) is fought with Bowman's two
tricks and two later ones, all configuration:
  - KL cost annealing (§3.1): β follows `kl_schedule` from 0 to 1 (kl_weight below);
  - word dropout (§3.1): a fraction `word_dropout` of the decoder's input words become <unk>
    (1.0 is the "inputless decoder"); the first input, the sentence start, is kept;
  - cyclical annealing (Fu et al. 2019): β rises from 0 to 1 over the first `kl_cycle_ratio` of
    every period of `kl_cycle_steps`, then stays at 1;
  - free bits (Kingma et al. 2016 §C.8): each latent dimension's KL, averaged over the batch,
    counts as at least `free_bits` nats in the training loss, so the optimiser gains nothing by
    pushing it below that.

Training's random draws (z, word dropout, dropout masks) are functions of (seed, step, replica)
(models/layers/stateless.py), so a run resumed from a checkpoint trains exactly as one that was
never stopped.

The class satisfies models/interface.py's SentenceModel (tests/models/test_interface.py checks
it): nothing is carried between batches (the state is ()); evaluation, decoding and the tools
use encode, evaluate_batch and decode.
"""
import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from models.layers import stateless
from models.layers.lstm import lstmp_cell, lstmp_layer, lstmp_shapes
from models.layers.sampling import next_ids
from models.interface import traced_as_written
from models.variables import VariableSpec, constant, create_all, uniform
from tfsys.errors import UserError

tfd = tfp.distributions

KL_SCHEDULES = ("logistic", "linear", "cyclical", "constant")
# The logistic schedule is sigmoid(k (step - anneal_steps / 2)) with k chosen so that it is
# sigmoid(-6) ≈ 0.0025 at step 0 and sigmoid(6) ≈ 0.9975 at anneal_steps (Bowman Fig. 2's shape).
LOGISTIC_SPAN = 12.0
# Random sites (models/layers/stateless.py): dropout before decoder layer k is site k, after the
# top layer site num_layers; word dropout and the posterior sample z the last two.
WORD_DROPOUT_SITE = stateless.NUM_SITES - 2
POSTERIOR_SITE = stateless.NUM_SITES - 1


def kl_weight(config, step):
  """β at `step` (a number or a scalar tensor) under config's schedule, as a float32 tensor."""
  step = tf.cast(step, tf.float32)
  schedule = config.kl_schedule
  if schedule == "constant":
    return tf.ones_like(step)
  if schedule == "logistic":
    k = LOGISTIC_SPAN / config.kl_anneal_steps
    return tf.sigmoid(k * (step - config.kl_anneal_steps / 2.0))
  if schedule == "linear":
    return tf.minimum(1.0, step / config.kl_anneal_steps)
  if schedule == "cyclical":
    period = float(config.kl_cycle_steps)
    phase = tf.math.floormod(step, period) / period
    return tf.minimum(1.0, phase / config.kl_cycle_ratio)
  raise UserError(f"--config.model.kl_schedule must be one of {', '.join(KL_SCHEDULES)}, "
                  f"got {schedule!r}")


def check(config) -> None:
  """Errors a user can cause in the model's config, before anything is built."""
  if config.kl_schedule not in KL_SCHEDULES:
    raise UserError(f"--config.model.kl_schedule must be one of {', '.join(KL_SCHEDULES)}, "
                    f"got {config.kl_schedule!r}")
  if config.kl_schedule in ("logistic", "linear") and config.kl_anneal_steps <= 0:
    raise UserError(f"--config.model.kl_anneal_steps must be positive, got {config.kl_anneal_steps}")
  if config.kl_schedule == "cyclical" and (config.kl_cycle_steps <= 0
                                           or not 0 < config.kl_cycle_ratio <= 1):
    raise UserError("the cyclical schedule needs --config.model.kl_cycle_steps > 0 and "
                    f"0 < --config.model.kl_cycle_ratio <= 1, got {config.kl_cycle_steps} "
                    f"and {config.kl_cycle_ratio}")
  if not 0.0 <= config.word_dropout <= 1.0:
    raise UserError(f"--config.model.word_dropout must be in [0, 1], got {config.word_dropout}")
  if config.latent_dim < 0 or config.free_bits < 0:
    raise UserError("--config.model.latent_dim and --config.model.free_bits must be >= 0")


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, 1)) per dimension, through tfp.distributions."""
  q = tfd.Normal(mean, tf.exp(0.5 * logvar))
  return tfd.kl_divergence(q, tfd.Normal(tf.zeros_like(mean), tf.ones_like(mean)))


def variable_shapes(config, vocab_size: int) -> dict:
  e, h, d, layers = config.embedding_dim, config.lstm_units, config.latent_dim, config.num_layers
  shapes = {"embedding": [vocab_size, e]}
  if d:
    dim = e
    for layer in range(layers):
      for name, shape in lstmp_shapes(dim, h, 0).items():
        shapes[f"enc{layer}_{name}"] = shape
      dim = h
    shapes["posterior_w"] = [h, 2 * d]
    shapes["posterior_b"] = [2 * d]
    shapes["dec_init_w"] = [d, layers * 2 * h]
    shapes["dec_init_b"] = [layers * 2 * h]
  dim = e + (d if config.feed_z else 0)
  for layer in range(layers):
    for name, shape in lstmp_shapes(dim, h, 0).items():
      shapes[f"dec{layer}_{name}"] = shape
    dim = h
  shapes["softmax_w"] = [vocab_size, h]
  shapes["softmax_b"] = [vocab_size]
  return shapes


def variable_specs(config, vocab_size: int, seed: int = 0) -> list:
  """The model's variables as declared (models/variables.py), in name order: biases at 0,
  matrices U(-init_scale, init_scale). The word embedding is a table (the full softmax is not:
  every row of it gets a gradient)."""
  specs = []
  for k, (name, shape) in enumerate(sorted(variable_shapes(config, vocab_size).items())):
    value = (constant(shape) if len(shape) == 1 else
             uniform(shape, config.init_scale, seed * 1000 + k))
    # The embedding's rows: the batch's words and the <eos> each sentence starts from.
    touched = dict(table=True, rows_per_token=1, rows_per_batch=1) if name == "embedding" else {}
    specs.append(VariableSpec(name, tuple(shape), value, **touched))
  return specs


@traced_as_written
class SentenceVAE(tf.Module):
  """Sentence VAE (latent_dim > 0) or RNNLM (latent_dim = 0) over whole sentences."""

  variable_shapes = staticmethod(variable_shapes)   # models/interface.py: from the config alone
  variable_specs = staticmethod(variable_specs)

  def __init__(self, config, vocab_words, seed: int = 0, name: str = "sentence_vae",
               placement=None):
    super().__init__(name=name)
    check(config)
    if config.num_layers >= WORD_DROPOUT_SITE:
      raise ValueError(f"at most {WORD_DROPOUT_SITE - 1} layers, got {config.num_layers}")
    self.config = config
    self.seed = seed   # with the step and the replica, the seed of every training-time draw
    words = list(vocab_words)
    self.vocab_size = len(words)
    self.latent_dim = config.latent_dim
    self.eos_id = words.index("<eos>") if "<eos>" in words else 0
    self.unk_id = words.index("<unk>") if "<unk>" in words else self.eos_id
    self.params = create_all(variable_specs(config, self.vocab_size, seed), placement)

  def _lstm(self, prefix: str, layer: int) -> dict:
    return {k: self.params[f"{prefix}{layer}_{k}"] for k in ("w_x", "w_h", "b")}

  # ---------------------------------------------------------------- encoder, posterior
  def encode(self, targets, lengths):
    """Word ids [B, T] (the words and <eos>, padded) and lengths [B] -> μ, log σ² [B, D]."""
    x = tf.nn.embedding_lookup(self.params["embedding"], targets)
    batch = tf.shape(targets)[0]
    for layer in range(self.config.num_layers):
      zeros = tf.zeros([batch, self.config.lstm_units])
      x, _ = lstmp_layer(x, (zeros, zeros), self._lstm("enc", layer))
    last = tf.gather(x, tf.maximum(lengths - 1, 0), batch_dims=1)   # before the padding
    stats = tf.matmul(last, self.params["posterior_w"]) + self.params["posterior_b"]
    mean, logvar = tf.split(stats, 2, axis=-1)
    return mean, logvar

  # Independent Normals, not MultivariateNormalDiag: the same distribution, but its sampler
  # also takes a batch of 0 sentences (MultivariateNormalDiag's divides by the batch size).
  def posterior(self, mean, logvar):
    return tfd.Independent(tfd.Normal(mean, tf.exp(0.5 * logvar)), reinterpreted_batch_ndims=1)

  def prior(self, batch):
    zeros = tf.zeros([batch, self.latent_dim])
    return tfd.Independent(tfd.Normal(zeros, tf.ones_like(zeros)), reinterpreted_batch_ndims=1)

  # ---------------------------------------------------------------- decoder
  def initial_state(self, batch_size):
    return ()   # every batch is whole sentences: nothing carries over

  def decoder_state(self, z, batch):
    """The decoder's initial (c, h) per layer: a linear map of z (h through tanh), or zeros."""
    units = self.config.lstm_units
    if not self.latent_dim:
      zeros = tf.zeros([batch, units])
      return tuple((zeros, zeros) for _ in range(self.config.num_layers))
    init = tf.matmul(z, self.params["dec_init_w"]) + self.params["dec_init_b"]
    parts = tf.split(init, 2 * self.config.num_layers, axis=-1)
    return tuple((parts[2 * k], tf.tanh(parts[2 * k + 1])) for k in range(self.config.num_layers))

  def _decoder_inputs(self, ids, z):
    x = tf.nn.embedding_lookup(self.params["embedding"], ids)
    if self.latent_dim and self.config.feed_z:
      zt = tf.broadcast_to(z[:, None, :], tf.concat([tf.shape(ids), [self.latent_dim]], 0))
      x = tf.concat([x, zt], axis=-1)
    return x

  def _step_seed(self, seed):
    return stateless.step_seed(self.seed, 0) if seed is None else seed

  def decode_hidden(self, inputs, state, z, training: bool, seed=None):
    """Decoder outputs [B, T, H] for input ids [B, T] from `state`, and the final state.

    seed: the step's seed (stateless.step_seed) for the dropout masks in training; by default
    step 0's on this replica."""
    layers = self.config.num_layers
    rate = self.config.dropout if training else 0.0
    if rate:
      seed = self._step_seed(seed)
    x = self._decoder_inputs(inputs, z)
    new_state = []
    for layer in range(layers):
      if rate:
        x = stateless.dropout(x, rate, stateless.site_seed(seed, layer))
      x, s = lstmp_layer(x, state[layer], self._lstm("dec", layer))
      new_state.append(s)
    if rate:
      x = stateless.dropout(x, rate, stateless.site_seed(seed, layers))
    return x, tuple(new_state)

  def output_logits(self, h):
    """Decoder outputs [B, T, H] -> logits [B, T, V]."""
    return tf.einsum("bth,vh->btv", h, self.params["softmax_w"]) + self.params["softmax_b"]

  def reconstruction_nll(self, batch, z, training: bool = False, seed=None):
    """-log p(x|z) per sentence [B]: the targets' NLL summed over each sentence's positions.

    seed: the step's seed (stateless.step_seed) for word dropout and dropout in training."""
    inputs = batch["inputs"]
    if training:
      seed = self._step_seed(seed)
    if training and self.config.word_dropout:
      u = tf.random.stateless_uniform(tf.shape(inputs),
                                      stateless.site_seed(seed, WORD_DROPOUT_SITE))
      drop = u < self.config.word_dropout
      drop = tf.logical_and(drop, tf.range(tf.shape(inputs)[1])[None, :] > 0)  # keep the start
      inputs = tf.where(drop, self.unk_id, inputs)
    state = self.decoder_state(z, tf.shape(inputs)[0])
    h, _ = self.decode_hidden(inputs, state, z, training, seed)
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["targets"], self.output_logits(h))
    return tf.reduce_sum(nll * batch["weights"], axis=1)

  # ---------------------------------------------------------------- training loss
  def loss(self, batch, state, training: bool, step=0, replica=None):
    """(objective per target token, metric sums, ()) for a batch of whole sentences.

    objective = (Σ reconstruction NLL + β Σ KL) / tokens; metrics hold exact sums, so that the
    caller can aggregate over batches and replicas: nll_sum (reconstruction), kl_sum,
    num_tokens, num_sentences.

    In training z, the word dropout and the dropout masks are a function of (self.seed, step,
    replica): step is the global step (an int, a scalar tensor or the step variable), replica
    this replica's index (default: its id in the tf.distribute replica context, else 0; a
    parameter-server worker passes its task index). training=False draws z the same way and
    drops nothing.
    """
    num_sentences = tf.cast(tf.shape(batch["targets"])[0], tf.float32)
    seed = stateless.step_seed(self.seed, step, replica)
    if self.latent_dim:
      mean, logvar = self.encode(batch["targets"], batch["lengths"])
      # Reparameterised (Kingma & Welling 2014 §2.4): z = μ + σ ε, so gradients flow to μ, σ.
      eps = tf.random.stateless_normal(tf.shape(mean), stateless.site_seed(seed, POSTERIOR_SITE))
      z = mean + tf.exp(0.5 * logvar) * eps
      kl_dims = kl_to_standard_normal(mean, logvar)      # [B, D]
      kl = tf.reduce_sum(kl_dims)
      kl_term = kl
      if self.config.free_bits:
        kl_term = num_sentences * tf.reduce_sum(
            tf.maximum(tf.reduce_mean(kl_dims, axis=0), self.config.free_bits))
      beta = kl_weight(self.config, step) if training else 1.0
    else:
      z, kl, kl_term, beta = None, tf.constant(0.0), tf.constant(0.0), 1.0
    rec = tf.reduce_sum(self.reconstruction_nll(batch, z, training, seed))
    num_tokens = tf.reduce_sum(batch["weights"])
    objective = (rec + beta * kl_term) / tf.maximum(num_tokens, 1.0)
    metrics = {"nll_sum": rec, "kl_sum": kl, "num_tokens": num_tokens,
               "num_sentences": num_sentences}
    return objective, metrics, state

  def scalars(self, sums: dict, step: int) -> dict:
    """TensorBoard scalars from summed training metrics (train/ run)."""
    n, tokens = max(sums["num_sentences"], 1.0), max(sums["num_tokens"], 1.0)
    rec, kl = sums["nll_sum"], sums["kl_sum"]
    out = {"train/reconstruction_nll": rec / n, "train/kl": kl / n, "train/elbo": -(rec + kl) / n,
           "train/elbo_perplexity": math.exp(min((rec + kl) / tokens, 80.0)),
           "train/word_dropout": float(self.config.word_dropout)}
    if self.latent_dim:
      out["train/kl_weight"] = float(kl_weight(self.config, step))
    return out

  # ---------------------------------------------------------------- evaluation
  def evaluate_batch(self, batch, num_samples, seed):
    """Per sentence: the importance-weighted bound on log p(x) with `num_samples` samples
    (Burda et al. 2016: log (1/k) Σ_i p(x, z_i) / q(z_i|x), a lower bound that tightens as k
    grows and is the ELBO for k = 1); the ELBO estimated from the same samples, (1/k) Σ_i log
    p(x, z_i) / q(z_i|x), never above the bound (Jensen); its reconstruction term averaged
    over the samples and its KL in closed form (they add up to -ELBO up to the samples' noise in
    the KL); and the posterior's μ and log σ². seed: int32 [2], stateless sampling."""
    batch_size = tf.shape(batch["targets"])[0]
    if not self.latent_dim:
      rec = self.reconstruction_nll(batch, None)
      zeros = tf.zeros([batch_size, 0])
      return {"log_px": -rec, "elbo": -rec, "rec_nll": rec, "kl": tf.zeros_like(rec),
              "mean": zeros, "logvar": zeros}
    mean, logvar = self.encode(batch["targets"], batch["lengths"])
    q, p = self.posterior(mean, logvar), self.prior(batch_size)

    def body(i, log_w, rec):
      z = q.sample(seed=tf.stack([seed[0], seed[1] + i]))
      r = self.reconstruction_nll(batch, z)
      return i + 1, log_w.write(i, -r + p.log_prob(z) - q.log_prob(z)), rec.write(i, r)
    _, log_w, rec = tf.while_loop(
        lambda i, *_: i < num_samples, body,
        (tf.constant(0), tf.TensorArray(tf.float32, size=num_samples),
         tf.TensorArray(tf.float32, size=num_samples)))
    log_w = log_w.stack()                                 # [k, B]
    log_px = tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(tf.cast(num_samples, tf.float32))
    kl = tf.reduce_sum(kl_to_standard_normal(mean, logvar), axis=-1)
    return {"log_px": log_px, "elbo": tf.reduce_mean(log_w, axis=0),
            "rec_nll": tf.reduce_mean(rec.stack(), axis=0), "kl": kl, "mean": mean,
            "logvar": logvar}

  # ---------------------------------------------------------------- generation
  def decode(self, z, state, first, max_words, temperature, seed):
    """Generates from `state` (and z, for feed_z) after the input ids `first` [B], one word at
    a time, greedy at temperature 0, else sampled (stateless, from seed int32 [2]).

    Returns ids [B, L]: each row's words then <eos>, and <eos> after it (L <= max_words + 1;
    a row that has not ended by max_words words is cut there)."""
    batch = tf.shape(first)[0]
    layers = self.config.num_layers
    lstm = [self._lstm("dec", layer) for layer in range(layers)]
    w, b = self.params["softmax_w"], self.params["softmax_b"]
    temperature = tf.cast(temperature, tf.float32)

    def body(t, prev, state, done, out):
      x = tf.nn.embedding_lookup(self.params["embedding"], prev)
      if self.latent_dim and self.config.feed_z:
        x = tf.concat([x, z], axis=-1)
      new_state = []
      for layer in range(layers):
        c, x = lstmp_cell(tf.matmul(x, lstm[layer]["w_x"]) + lstm[layer]["b"], state[layer],
                          lstm[layer]["w_h"])
        new_state.append((c, x))
      logits = tf.matmul(x, w, transpose_b=True) + b
      nxt = next_ids(logits, temperature, tf.stack([seed[0], seed[1] + t]))
      nxt = tf.where(done | (t >= max_words), self.eos_id, nxt)   # the last position ends it
      return t + 1, nxt, tuple(new_state), done | tf.equal(nxt, self.eos_id), out.write(t, nxt)

    _, _, _, _, out = tf.while_loop(
        lambda t, prev, state, done, out: tf.logical_and(t <= max_words,
                                                          tf.logical_not(tf.reduce_all(done))),
        body, (tf.constant(0), first, state, tf.zeros([batch], tf.bool),
               tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])))
    # An empty batch is done before the first word: no step ran and nothing was written.
    ids = tf.cond(out.size() > 0, out.stack, lambda: tf.zeros([0, batch], tf.int32))   # [L, B]
    return tf.transpose(tf.reshape(ids, [tf.shape(ids)[0], batch]))


def words_of(ids, vocab_words, eos_id: int) -> list[list[str]]:
  """Rows of generated ids -> their words, up to (not including) the first <eos>."""
  out = []
  for row in np.asarray(ids):
    ends = np.flatnonzero(row == eos_id)
    out.append([vocab_words[i] for i in row[:ends[0] if len(ends) else len(row)]])
  return out
