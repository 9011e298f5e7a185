"""What every training driver shares: data, model, optimizer, checkpoints, evaluation, output.

A driver (the all-reduce loop in loop.py, the parameter-server chief and workers in ps_loop.py)
makes one `Run` and calls its pieces; none of them knows which model it trains.
"""
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

import models
from tfsys import data
from tfsys.errors import EXIT_DIVERGED, UserError
from tfsys.monitor import Writers, format_duration
from tfsys.train import tasks
from tfsys.train import workdir as workdir_lib
from tfsys.train.checkpoint import Checkpointer
from tfsys.train.evaluate import perplexity
from tfsys.train.optim import LearningRate, make_optimizer

RESULTS_FILE = "results.json"


class DivergedError(UserError):
  """Training diverged: the loss went far above a uniform guess's (train.divergence_factor).

  The last good checkpoint is left in place: a checkpoint is written only after the step's
  loss passed this check.
  """
  exit_status = EXIT_DIVERGED


class NonFiniteLossError(DivergedError):
  """The loss (or the weights) became NaN or infinite; the last good checkpoint is left in place."""


def check(config):
  t = config.train
  for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if t[name] <= 0:
      raise UserError(f"--config.train.{name} must be positive, got {t[name]}")
  if config.optim.loss_per not in ("token", "sequence"):
    raise UserError(f"--config.optim.loss_per must be token or sequence, got {config.optim.loss_per!r}")
  if not 0.0 <= config.model.dropout < 1.0:
    raise UserError(f"--config.model.dropout must be in [0, 1), got {config.model.dropout}")
  factor = t.divergence_factor
  if factor and not factor > 1.0:
    raise UserError(f"--config.train.divergence_factor must be above 1 (or 0 = off), got {factor}")


def sq_norm(grads):
  """Squared L2 norm of a gradient list; sparse rows are summed per index first (densified)."""
  return tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in grads if g is not None])


class Run:
  """The set-up of one training process.

  `replicas` gradients make one update, each from `local_batch` rows; the training stream is
  cut into `data_shards` × `local_batch` rows, one block per shard (a replica, or a worker of the
  parameter-server backends, which may have more workers than gradients per update). What the
  data are and how the model is evaluated is the task's business (tasks.py).
  """

  def __init__(self, config, workdir: str, backend, replicas: int, data_shards: int):
    check(config)
    self.config, self.workdir, self.backend = config, workdir, backend
    self.is_chief = backend.is_chief
    strategy = backend.strategy
    # One trainer per workdir: the chief holds it before it writes anything there.
    self.lock = workdir_lib.hold(workdir) if self.is_chief else None
    self.resuming = workdir_lib.prepare(config, workdir, write=self.is_chief)
    tf.random.set_seed(config.seed)
    self.replicas = replicas
    self.corpus = data.make_corpus(config.data)
    self.vocab = data.load_vocabulary(config.data, self.corpus, workdir, save=self.is_chief)
    self.task = tasks.make(config, self.corpus, self.vocab)
    batch = config.train.batch_size
    if batch % replicas:
      raise UserError(f"--config.train.batch_size={batch} must be a multiple of the "
                      f"{replicas} replicas")
    self.batch, self.local_batch = batch, batch // replicas
    self.stream = self.task.stream(self.local_batch * data_shards, config.seed)
    steps_per_epoch = self.stream.steps_per_epoch
    if config.train.num_steps:
      self.total_steps = config.train.num_steps
    elif steps_per_epoch:
      self.total_steps = config.train.num_epochs * steps_per_epoch
    else:
      raise UserError("this corpus is streamed, so epochs are not counted: set --config.train.num_steps")
    self.eval_every = config.eval.every_steps or steps_per_epoch or 10_000
    self.words_per_step = self.task.words_per_step
    self.per_token_scale = self.task.per_token_scale

    with strategy.scope():
      self.model = models.build(config.model, self.vocab.words, seed=config.seed)
      self.optimizer = make_optimizer(config.optim)
      self.optimizer.build(self.model.trainable_variables)  # in scope: placed like the variables
      self.learning_rate = LearningRate(config.optim, batch)
      self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    self.variables = self.model.trainable_variables
    # The LSTM state of the whole global batch, for checkpoints only; during training each
    # replica carries its own rows.
    self.carried = tf.nest.map_structure(lambda s: tf.Variable(s, trainable=False),
                                         self.model.initial_state(batch))
    self.carries_state = bool(tf.nest.flatten(self.carried))
    self.checkpointer = Checkpointer(
        workdir, config.train.keep_checkpoints, self.is_chief, backend.task_name,
        model=self.model, optimizer=self.optimizer, step=self.step_var,
        learning_rate=self.learning_rate, lstm_state=list(tf.nest.flatten(self.carried)))
    self.restored = self.checkpointer.restore_latest()
    self.start = int(self.step_var.numpy())
    self.n_params = sum(int(np.prod(v.shape)) for v in self.variables)
    logging.info("[%s] %s: %d parameters, vocabulary %d, %d steps (%s steps/epoch), %s",
                 backend.task_name, config.model.name, self.n_params,
                 len(self.vocab), self.total_steps, steps_per_epoch or "?",
                 f"resuming at step {self.start} from {self.restored}" if self.restored
                 else "starting from scratch")
    if self.resuming and not self.restored:
      logging.info("workdir %s has a config but no checkpoint yet: starting at step 0", workdir)
    self.writers = Writers(workdir, enabled=self.is_chief)
    self.task.bind(self.model)
    self.saved_step = self.start
    self.last_valid, self.samples = None, []
    # The divergence stop: a loss per token above divergence_factor × ln V, the loss of a
    # uniform guess over the vocabulary, after the warm-up.
    self.divergence_factor = config.train.divergence_factor
    self.uniform_loss = math.log(len(self.vocab))
    # (time, step) at the first progress line: throughput after tracing and start-up.
    self._steady = None

  # ---------------------------------------------------------------- checkpoints
  def save(self, step: int, state_rows=None) -> None:
    """Checkpoints the model, optimizer, step and (if given) every row of the LSTM state."""
    # Never write a checkpoint that a resumed run could not train from.
    bad = [v.name for v in self.variables if not bool(tf.reduce_all(tf.math.is_finite(v)))]
    if bad:
      raise NonFiniteLossError(
          f"weights {', '.join(bad[:3])} are not finite at step {step}; stopping. The last good "
          f"checkpoint ({self.checkpointer.latest or 'none'}) is kept")
    if state_rows is not None:
      tf.nest.map_structure(lambda v, s: v.assign(s), self.carried, state_rows)
    try:
      path = self.checkpointer.save(step)
    except (tf.errors.OpError, OSError) as e:
      raise self.checkpointer.save_error(step, e) from None
    self.saved_step = step
    logging.info("saved %s", path)

  # ---------------------------------------------------------------- evaluation
  def evaluate_and_sample(self, step: int) -> None:
    writers = self.writers
    result = self.task.evaluate("valid")
    latest = self.checkpointer.latest
    if not math.isfinite(result["loss"]):
      raise NonFiniteLossError(f"validation loss is {result['loss']} at step {step}; stopping. "
                               f"The last good checkpoint ({latest}) "
                               "is kept; lower --config.optim.learning_rate")
    self._check_divergence("validation loss", result["loss"], step)
    if self.learning_rate.after_eval(result["perplexity"]):
      logging.info("validation perplexity stalled: learning rate decay now %.4g",
                   float(self.learning_rate.decay.numpy()))
    try:
      samples = self.task.samples(step)
    except UserError as e:  # NaN logits: the weights diverged even if the loss still looked finite
      raise NonFiniteLossError(f"at step {step}: {e}; stopping. The last good checkpoint "
                               f"({latest}) is kept") from None
    writers.scalars("eval", step, {f"eval/{k}": v for k, v in result.items()
                                   if k not in ("num_tokens", "num_sentences", "iw_samples")})
    writers.scalars("train", step, self.task.train_figures())
    writers.text("eval", step, "eval/samples",
                 "\n\n".join(f"{k + 1}. " + s.replace("\n", " / ") for k, s in enumerate(samples)))
    logging.info("step %d: validation perplexity %.2f (%d tokens)%s", step, result["perplexity"],
                 result["num_tokens"], _extras(result))
    for s in samples:
      logging.info("  sample: %s", s.replace("\n", " / "))
    self.last_valid, self.samples = result, samples

  # ---------------------------------------------------------------- output
  def check_loss(self, loss: float, step: int) -> None:
    """Stops the run (before anything of `step` is saved) if its training loss is not finite
    or has diverged."""
    if not math.isfinite(loss):
      raise NonFiniteLossError(
          f"loss is {loss} at step {step}; stopping. The last good checkpoint "
          f"({self.checkpointer.latest or 'none'}) is kept; lower --config.optim.learning_rate "
          "or set --config.optim.clip_norm and run again")
    self._check_divergence("loss", loss, step)

  def _check_divergence(self, what: str, loss: float, step: int) -> None:
    factor = self.divergence_factor
    if not factor or step <= self.config.optim.warmup_steps or loss <= factor * self.uniform_loss:
      return
    raise DivergedError(
        f"{what} {loss:.4g} at step {step} is above {factor:g} x ln V = "
        f"{factor * self.uniform_loss:.2f} (a uniform guess over the {len(self.vocab)} words "
        f"scores ln V = {self.uniform_loss:.2f}): the run diverged; stopping. The last good "
        f"checkpoint ({self.checkpointer.latest or 'none'}) is kept; lower "
        "--config.optim.learning_rate (or raise --config.train.divergence_factor, 0 = off)")

  def log_progress(self, step: int, loss: float, learning_rate: float, grad_norm: float,
                   perf: dict, eta_secs: float, metric_sums: dict | None = None) -> None:
    """metric_sums: the model's summed training metrics since the last line (its own scalars)."""
    if self._steady is None:
      self._steady = (time.perf_counter(), step)
    extra = self.model.scalars(metric_sums, step) if metric_sums else {}
    self.writers.scalars("train", step, {
        "train/loss": loss, "train/perplexity": perplexity(loss),
        "optim/learning_rate": learning_rate, "optim/grad_norm": grad_norm, **perf, **extra})
    logging.info("step %d/%d | loss %.3f | ppl %.1f | lr %.3g | %.0f words/s | %.3f s/step | "
                 "%s left", step, self.total_steps, loss, perplexity(loss), learning_rate,
                 perf["perf/words_per_sec"], perf["perf/step_secs"], format_duration(eta_secs))

  def steady_words_per_sec(self, step: int) -> float | None:
    """Words/s from the first progress line to `step` (None if too short to tell)."""
    if self._steady is None or step <= self._steady[1]:
      return None
    return (step - self._steady[1]) * self.words_per_step / (time.perf_counter() - self._steady[0])

  def finish(self, step: int, save_state_rows=None) -> dict:
    """Final validation (before saving: it checks for divergence), save, test, results.json."""
    words_per_sec = self.steady_words_per_sec(step)
    if self.total_steps > self.start or self.last_valid is None:
      self.evaluate_and_sample(step)
    if step > self.start or not self.checkpointer.latest:
      self.save(step, save_state_rows() if save_state_rows else None)
    test = self.task.evaluate("test")
    self.writers.scalars("eval", step, {f"eval/test_{k}": v for k, v in test.items()
                                        if k not in ("num_tokens", "num_sentences", "iw_samples")})
    self.writers.flush()
    results = {"step": step, "valid_perplexity": self.last_valid["perplexity"],
               "test_perplexity": test["perplexity"], "test_tokens": test["num_tokens"],
               "parameters": self.n_params, "samples": self.samples,
               "words_per_sec": words_per_sec}
    results.update({f"valid_{k}": v for k, v in self.last_valid.items()
                    if k not in ("loss", "perplexity", "num_tokens")})
    results.update({f"test_{k}": v for k, v in test.items()
                    if k not in ("loss", "perplexity", "num_tokens")})
    self.checkpointer.close()
    if self.is_chief:
      workdir_lib.write_json_atomically(os.path.join(self.workdir, RESULTS_FILE), results, indent=2)
      self.lock.release()
    logging.info("step %d: test perplexity %.2f (%d tokens)%s", step, test["perplexity"],
                 test["num_tokens"], _extras(test))
    return results


def _extras(result: dict) -> str:
  """A sentence model's other evaluation figures, for the log line."""
  keys = ("nll", "elbo", "reconstruction_nll", "kl", "active_units", "mutual_info")
  return "".join(f", {k} {result[k]:.2f}" if isinstance(result[k], float) else f", {k} {result[k]}"
                 for k in keys if k in result)
