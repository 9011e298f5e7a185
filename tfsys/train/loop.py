"""The one training loop: `train_and_evaluate(config, workdir)` for every model and backend.

Resumes by itself: if WORKDIR holds checkpoints it continues from the newest with the step, the
optimizer, the learning-rate decay, the carried LSTM state and the data position (the stream is
a pure function of the step) restored.
"""
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

import models
from tfsys import data
from tfsys.distribute.backends import make_backend
from tfsys.errors import UserError
from tfsys.monitor import NoiseScale, Throughput, Writers, format_duration
from tfsys.train import workdir as workdir_lib
from tfsys.train.checkpoint import Checkpointer
from tfsys.train.evaluate import Evaluator, Sampler, _reset, perplexity, render
from tfsys.train.optim import LearningRate, make_optimizer

RESULTS_FILE = "results.json"


def _sq_norm(grads):
  """Squared L2 norm of a gradient list; sparse rows are summed per index first (densified)."""
  return tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in grads if g is not None])


class NonFiniteLossError(UserError):
  """The loss became NaN or infinite; the last good checkpoint is left in place."""


def _check(config):
  t = config.train
  for name in ("batch_size", "unroll"):
    if t[name] <= 0:
      raise UserError(f"--config.train.{name} must be positive, got {t[name]}")
  for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if t[name] <= 0:
      raise UserError(f"--config.train.{name} must be positive, got {t[name]}")
  if config.optim.loss_per not in ("token", "sequence"):
    raise UserError(f"--config.optim.loss_per must be token or sequence, got {config.optim.loss_per!r}")
  if not 0.0 <= config.model.dropout < 1.0:
    raise UserError(f"--config.model.dropout must be in [0, 1), got {config.model.dropout}")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains config's model on config's data in workdir; returns the final metrics."""
  _check(config)
  # ---------------------------------------------------------------- set-up
  backend = make_backend(config.distribute)  # first: fixes devices and threads
  strategy, is_chief = backend.strategy, backend.is_chief
  resuming = workdir_lib.prepare(config, workdir, write=is_chief)
  tf.random.set_seed(config.seed)
  replicas = strategy.num_replicas_in_sync
  corpus = data.make_corpus(config.data)
  vocab = data.load_vocabulary(config.data, corpus, workdir, save=is_chief)
  batch, unroll = config.train.batch_size, config.train.unroll
  if batch % replicas:
    raise UserError(f"--config.train.batch_size={batch} must be a multiple of the "
                    f"{replicas} replicas")
  local_batch = batch // replicas
  stream = data.train_stream(config.data, corpus, vocab, batch, unroll, config.seed)
  steps_per_epoch = stream.steps_per_epoch
  if config.train.num_steps:
    total_steps = config.train.num_steps
  elif steps_per_epoch:
    total_steps = config.train.num_epochs * steps_per_epoch
  else:
    raise UserError("this corpus is streamed, so epochs are not counted: set --config.train.num_steps")
  eval_every = config.eval.every_steps or steps_per_epoch or 10_000

  with strategy.scope():
    model = models.build(config.model, vocab.words, seed=config.seed)
    optimizer = make_optimizer(config.optim)
    optimizer.build(model.trainable_variables)  # in scope: slots placed like the variables
    learning_rate = LearningRate(config.optim, batch)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  # The LSTM state of the whole global batch, for checkpoints only; during training each
  # replica carries its own rows as a per-replica value.
  carried = tf.nest.map_structure(lambda s: tf.Variable(s, trainable=False),
                                  model.initial_state(batch))
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints, is_chief, backend.task_name,
                              model=model,
                              optimizer=optimizer, step=step_var, learning_rate=learning_rate,
                              lstm_state=list(tf.nest.flatten(carried)))
  restored = checkpointer.restore_latest()
  start = int(step_var.numpy())

  def replica_rows(ctx):
    lo = ctx.replica_id_in_sync_group * local_batch
    return tf.nest.map_structure(lambda v: tf.identity(v[lo:lo + local_batch]), carried)
  state = strategy.experimental_distribute_values_from_function(replica_rows)
  n_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  logging.info("[%s] %s %s: %d parameters, vocabulary %d, %d steps (%s steps/epoch), %s",
               backend.task_name, config.model.name, config.model.input, n_params, len(vocab),
               total_steps,
               steps_per_epoch or "?",
               f"resuming at step {start} from {restored}" if restored else "starting from scratch")
  if resuming and not restored:
    logging.info("workdir %s has a config but no checkpoint yet: starting at step 0", workdir)

  writers = Writers(workdir, enabled=is_chief)
  evaluator = Evaluator(model, config.eval.batch_size, unroll)
  sampler = Sampler(model, vocab)
  valid_ids = corpus.token_ids("valid", vocab)

  # ---------------------------------------------------------------- the step
  variables = model.trainable_variables
  clip = config.optim.clip_norm
  per_token_scale = float(unroll) if config.optim.loss_per == "sequence" else 1.0
  noise_every = config.monitor.noise_scale_every
  track_noise = noise_every > 0 and replicas > 1   # two batch sizes need two replicas
  noise_scale = NoiseScale(config.monitor.noise_scale_decay)

  def step_fn(batch, state):
    state = _reset(state, batch["reset"])
    with tf.GradientTape() as tape:
      loss, metrics, new_state = model.loss(batch, state, training=True)
      # Each replica's loss is its local per-token mean; dividing by the replica count makes
      # the summed gradients the gradient of the global-batch mean. loss_per="sequence" sums
      # over the unrolled steps instead (Zaremba et al. 2014, Kim et al. 2016: the objective
      # their lr = 1 with norm clipping at 5 was tuned for).
      scaled = loss * per_token_scale / replicas
    grads = tape.gradient(scaled, variables)
    out = {"loss": loss}
    if track_noise:
      # This replica's gradient of its own mean loss: the "small batch" estimate.
      out["small_sq"] = _sq_norm(grads) * (replicas / per_token_scale) ** 2
    # All-reduce here, not in the optimizer, so that clipping sees the global gradient.
    ctx = tf.distribute.get_replica_context()
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    if track_noise:
      out["big_sq"] = _sq_norm(grads) / per_token_scale ** 2   # the "big batch" estimate
    if clip:
      grads, norm = tf.clip_by_global_norm(grads, clip)
    else:
      norm = tf.linalg.global_norm(grads)
    rate = learning_rate(step_var)

    def apply(_, grads):  # cross-replica context: one update per variable, no second reduce
      optimizer.apply(grads, variables, learning_rate(step_var))
      step_var.assign_add(1)
    ctx.merge_call(apply, args=(grads,))
    out.update(grad_norm=norm, learning_rate=rate)
    return out, new_state

  @tf.function
  def train_step(batch, state):
    out, new_state = strategy.run(step_fn, args=(batch, state))
    first = lambda v: strategy.experimental_local_results(v)[0]
    mean = lambda v: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
    result = {"loss": mean(out["loss"]), "grad_norm": first(out["grad_norm"]),
              "learning_rate": first(out["learning_rate"])}
    if track_noise:
      result.update(small_sq=mean(out["small_sq"]), big_sq=first(out["big_sq"]))
    return result, new_state

  @tf.function
  def gather_rows(state):  # every replica's rows of the LSTM state, in replica order
    return tf.nest.map_structure(lambda s: strategy.gather(s, axis=0), state)

  saved_step = [start]

  def save(step):
    # Never write a checkpoint that a resumed run could not train from.
    bad = [v.name for v in variables if not bool(tf.reduce_all(tf.math.is_finite(v)))]
    if bad:
      raise NonFiniteLossError(
          f"weights {', '.join(bad[:3])} are not finite at step {step}; stopping. The last good "
          f"checkpoint ({checkpointer.latest or 'none'}) is kept")
    tf.nest.map_structure(lambda v, s: v.assign(s), carried, gather_rows(state))
    path = checkpointer.save(step)
    saved_step[0] = step
    logging.info("saved %s", path)

  def evaluate_and_sample(step):
    result = evaluator.perplexity(valid_ids, config.eval.max_tokens)
    if not math.isfinite(result["loss"]):
      raise NonFiniteLossError(f"validation loss is {result['loss']} at step {step}; stopping. "
                               f"The last good checkpoint ({checkpointer.latest}) "
                               "is kept; lower --config.optim.learning_rate")
    if learning_rate.after_eval(result["perplexity"]):
      logging.info("validation perplexity stalled: learning rate decay now %.4g",
                   float(learning_rate.decay.numpy()))
    try:
      samples = [render(sampler.generate("", config.eval.sample_words, config.eval.temperature,
                                         seed=step * 100 + k), vocab.eos)
                 for k in range(config.eval.num_samples)]
    except UserError as e:  # NaN logits: the weights diverged even if the loss still looked finite
      raise NonFiniteLossError(f"at step {step}: {e}; stopping. The last good checkpoint "
                               f"({checkpointer.latest}) is kept") from None
    writers.scalars("eval", step, {"eval/perplexity": result["perplexity"],
                                   "eval/loss": result["loss"]})
    writers.text("eval", step, "eval/samples",
                 "\n\n".join(f"{k + 1}. " + s.replace("\n", " / ") for k, s in enumerate(samples)))
    logging.info("step %d: validation perplexity %.2f (%d tokens)", step, result["perplexity"],
                 result["num_tokens"])
    for s in samples:
      logging.info("  sample: %s", s.replace("\n", " / "))
    return result, samples

  # ---------------------------------------------------------------- training
  dataset = strategy.distribute_datasets_from_function(lambda ctx: stream.dataset(start, ctx))
  iterator = iter(dataset)
  throughput = Throughput(start, total_steps)
  words_per_step = batch * unroll
  losses = []
  step = start
  steady = None  # (time, step) after the first logging interval: throughput without tracing
  last_valid = None
  samples = []
  try:
    while step < total_steps:
      if step == start and start == 0:
        writers.trace_on()
      out, state = train_step(next(iterator), state)
      if step == start and start == 0:
        writers.trace_export("train", "train_step", step)
      loss = float(out["loss"])
      if not math.isfinite(loss):
        last = checkpointer.latest
        raise NonFiniteLossError(
            f"loss is {loss} at step {step + 1}; stopping. The last good checkpoint "
            f"({last or 'none'}) is kept; lower --config.optim.learning_rate or set "
            "--config.optim.clip_norm and run again")
      step += 1
      losses.append(loss)
      throughput.add(words_per_step)
      if step % config.train.log_every == 0 or step == total_steps:
        perf = throughput.report(step)
        if steady is None:
          steady = (time.perf_counter(), step)
        mean = float(np.mean(losses))
        losses = []
        writers.scalars("train", step, {
            "train/loss": mean, "train/perplexity": perplexity(mean),
            "optim/learning_rate": float(out["learning_rate"]),
            "optim/grad_norm": float(out["grad_norm"]), **perf})
        logging.info("step %d/%d | loss %.3f | ppl %.1f | lr %.3g | %.0f words/s | %.3f s/step | "
                     "%s left", step, total_steps, mean, perplexity(mean),
                     float(out["learning_rate"]), perf["perf/words_per_sec"],
                     perf["perf/step_secs"], format_duration(throughput.eta_secs))
      if track_noise and step % noise_every == 0:
        writers.scalars("train", step, noise_scale.update(
            float(out["small_sq"]), float(out["big_sq"]), local_batch, batch))
      if step % config.train.histogram_every == 0:
        writers.histograms("train", step, {v.name.split(":")[0]: v for v in variables})
      evaluated = step % eval_every == 0 and step < total_steps
      if evaluated:
        last_valid, samples = evaluate_and_sample(step)
      if step < total_steps and (evaluated or step % config.train.checkpoint_every == 0):
        save(step)
        writers.flush()
  except KeyboardInterrupt:
    if step > saved_step[0]:
      save(step)
    logging.info("interrupted at step %d; run the same command again to resume", step)
    raise

  train_secs = time.perf_counter() - steady[0] if steady else 0.0
  steady_words = (step - steady[1]) * words_per_step if steady else 0
  # ---------------------------------------------------------------- final evaluation
  if total_steps > start or last_valid is None:
    last_valid, samples = evaluate_and_sample(step)   # before saving: it checks for divergence
  if step > start or not checkpointer.latest:
    save(step)
  test = evaluator.perplexity(corpus.token_ids("test", vocab), config.eval.max_tokens)
  writers.scalars("eval", step, {"eval/test_perplexity": test["perplexity"]})
  writers.flush()
  results = {"step": step, "valid_perplexity": last_valid["perplexity"],
             "test_perplexity": test["perplexity"], "test_tokens": test["num_tokens"],
             "parameters": n_params, "samples": samples,
             "words_per_sec": steady_words / train_secs if train_secs > 0 else None}
  checkpointer.close()
  if is_chief:
    tmp = os.path.join(workdir, RESULTS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(workdir, RESULTS_FILE))
  logging.info("step %d: test perplexity %.2f (%d tokens)", step, test["perplexity"],
               test["num_tokens"])
  return results
