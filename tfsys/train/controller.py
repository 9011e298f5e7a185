"""The controller: when to log, evaluate, save and stop, for every backend (Orbit's split).

An executor (executor.py) runs steps; the controller asks it for as many as there are until the
next duty (a progress line, an evaluation, a checkpoint, a histogram, the end), at most
`max_steps_per_call` at a time, and does the duty at exactly that step. It also owns what every
backend reports alike: the stop on a non-finite or diverged loss (checked on every step before
anything of it is saved) and on float16 gradients that stay not finite, the gradient noise
scale, the save on Ctrl-C and SIGTERM, the final validation, test and results.json.
"""
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfsys.errors import UserError, exit_now
from tfsys.monitor import NoiseScale, Throughput, format_duration
from tfsys.train import precision, workdir as workdir_lib
from tfsys.train.evaluate import perplexity
from tfsys.train.interrupts import Interrupts
from tfsys.train.run import DivergedError, NonFiniteLossError

RESULTS_FILE = "results.json"


def crossed(period: int, before: int, after: int) -> bool:
  """Whether a multiple of `period` lies in (before, after]: a duty due at a step passed (an
  exact executor stops on it; async_ps may run past it)."""
  return period > 0 and after // period > before // period


class Controller:
  """Runs `run`'s training through `executor`; `train()` returns the final results."""

  def __init__(self, run, executor, profiler):
    self.r, self.ex, self.profiler = run, executor, profiler
    c = run.config
    self.log_every, self.checkpoint_every = c.train.log_every, c.train.checkpoint_every
    self.histogram_every, self.eval_every = c.train.histogram_every, run.eval_every
    self.noise_every = c.monitor.noise_scale_every
    self.noise_scale = NoiseScale(c.monitor.noise_scale_decay)
    self.interrupts = Interrupts(agreed=executor.agreed_stop)
    self.saved_step = run.start
    self.last_valid, self.samples = None, []
    # The divergence stop: a loss per token above divergence_factor × ln V, the loss of a
    # uniform guess over the vocabulary, after the warm-up.
    self.divergence_factor = c.train.divergence_factor
    self.uniform_loss = math.log(len(run.vocab))
    self._steady = None   # (time, step) at the first progress line: throughput after start-up
    self._losses, self._sums = [], {}
    self._skips_in_a_row = 0   # float16: steps skipped for gradients that were not finite
    # The profiled steps as configured (the profiler forgets them where it does not trace: a
    # worker that is not the chief), so that every worker cuts its calls the same way.
    self.profile_steps = profiler.steps

  # ---------------------------------------------------------------- the loop
  def steps_until_duty(self, step: int) -> int:
    """Steps from `step` to the next one with a duty (or the end), at most max_steps_per_call;
    one at a time through the profiled steps, so that each is its own call in the trace."""
    r = self.r
    periods = [p for p in (self.log_every, self.eval_every, self.checkpoint_every,
                           self.histogram_every) if p > 0]
    nxt = min([r.total_steps, *((step // p + 1) * p for p in periods)])
    n = nxt - step
    if self.ex.max_steps_per_call:
      n = min(n, self.ex.max_steps_per_call)
    if self.profile_steps:
      first, last = self.profile_steps
      if step + 1 < first:
        n = min(n, first - 1 - step)
      elif step + 1 <= last:
        n = 1
    return max(n, 1)

  def train(self) -> dict:
    r, ex, interrupts = self.r, self.ex, self.interrupts
    step = r.start
    self.throughput = Throughput(step, r.total_steps)
    self.profiler.begin(step, enabled=r.is_chief)
    interrupts.install()
    stopped = False
    try:
      ex.begin()
      while step < r.total_steps:
        # A signal during the call or its bookkeeping is a request: the executor stops at a
        # step it can account for, and the request is acted on below, at that step.
        with interrupts.deferred(raise_on_exit=False):
          self.profiler.before(step + 1)
          stretch = ex.train(self.steps_until_duty(step), interrupts)
          self.profiler.after(stretch.end)
          self._account(stretch)
        before, step = step, stretch.end
        # A request of a chief (no all-reduce to carry it) stops here; the all-reduce backends
        # pass it on with their next step.
        chief_stop = lambda: interrupts.requested and not ex.agreed_stop
        if not stretch.stopped and not chief_stop():
          # A signal during the duties (an evaluation, a checkpoint) is a request too, acted on
          # once they are done (a second Ctrl-C leaves at once): raised at whichever line the
          # main thread is on, inside an eager TensorFlow call, it has crashed the process.
          with interrupts.deferred(raise_on_exit=False, insist=True):
            self._duties(before, step)
        stopped = stretch.stopped or chief_stop()
        if stopped:   # every worker has the step done: save it
          if not stretch.stopped:
            # The request came after the call: stop the other workers first (async_ps's go on
            # applying updates until told), at the step they settle on.
            step = ex.halt()
          if step > self.saved_step:
            self.save(step)
          break
    except Interrupts.Again:
      ex.halt()
      logging.warning("Ctrl-C again: leaving without waiting for the step under way; not "
                      "saved, so a run of the same command resumes at step %d", self.saved_step)
      raise
    except KeyboardInterrupt as e:
      step = ex.halt()
      if step > self.saved_step:
        self.save(step)
      if type(e) is KeyboardInterrupt:  # pylint: disable=unidiomatic-typecheck
        logging.info("interrupted at step %d; run the same command again to resume", step)
        raise
      raise interrupts.stop_error(step) from None
    except tf.errors.OpError as e:
      if r.stream.failure is not None:   # the data's own error, which tf.data does not quote
        raise r.stream.failure from None
      lost = ex.lost(e)
      if lost is None:
        raise
      exit_now(str(lost), lost.exit_status)   # a call of another thread may still be blocked
    finally:
      interrupts.uninstall()
      self.profiler.stop()   # a run that ends (or fails) before step B still writes its trace
      ex.end()
    if not stopped:
      return self.finish(step)
    error = interrupts.stop_error(step)
    if isinstance(error, KeyboardInterrupt):
      logging.info("interrupted at step %d; run the same command again to resume", step)
    raise error

  def _account(self, s) -> None:
    """Checks and records each step of a stretch (before any duty at its end is done)."""
    r = self.r
    if len(s.losses) == s.steps:
      for i, loss in enumerate(s.losses):
        self.check_loss(float(loss), s.start + i + 1)
    elif len(s.losses):
      self.check_loss(float(np.mean(s.losses)), s.end)
    if r.loss_scale is not None:
      self._check_skips(s)
    self._losses.extend(float(x) for x in s.losses)
    for k, v in s.metrics.items():
      self._sums[k] = self._sums.get(k, 0.0) + float(np.sum(v))
    self.throughput.add(r.words_per_step * s.steps)
    if s.noise is not None and self.noise_every > 0:
      for i, (small, big) in enumerate(zip(*s.noise)):
        # (a float16 step whose gradients overflowed, and was skipped, estimates nothing)
        if (s.start + i + 1) % self.noise_every == 0 and np.isfinite(small) and np.isfinite(big):
          r.writers.scalars("train", s.start + i + 1, self.noise_scale.update(
              float(small), float(big), r.local_batch, r.batch))
    if s.series:
      r.writers.scalar_series("train", list(range(s.start + 1, s.end + 1)), s.series)
    self._last = s

  def _duties(self, before: int, step: int) -> None:
    r, ex = self.r, self.ex
    s = self._last
    if crossed(self.log_every, before, step) or step == r.total_steps:
      perf = self.throughput.report(step)
      if self._losses:
        self.log_progress(step, float(np.mean(self._losses)),
                          float(s.learning_rates[-1]) if len(s.learning_rates) else 0.0,
                          float(s.grad_norms[-1]) if len(s.grad_norms) else 0.0,
                          perf, self.throughput.eta_secs, self._sums)
      r.writers.scalars("train", step, ex.progress_scalars())
      self._losses, self._sums = [], {}
    if crossed(self.histogram_every, before, step):
      ex.to_host(slots=False)
      r.writers.histograms("train", step, {v.name.split(":")[0]: v for v in r.variables})
    evaluated = crossed(self.eval_every, before, step) and step < r.total_steps
    if evaluated:
      ex.to_host(slots=False)
      self.evaluate_and_sample(step)
      ex.after_evaluation()
    if step < r.total_steps and (evaluated or crossed(self.checkpoint_every, before, step)):
      self.save(step)
      r.writers.flush()

  # ---------------------------------------------------------------- checkpoints
  def save(self, step: int) -> None:
    """Checkpoints the model, optimizer, step and every row of the carried LSTM state."""
    self.ex.to_host(slots=True)
    self.r.step_var.assign(step)
    self.r.save(step, self.ex.state_rows())
    self.saved_step = step
    self.r.writers.flush()   # what was logged up to the checkpoint, on disk with it

  # ---------------------------------------------------------------- evaluation
  def evaluate_and_sample(self, step: int) -> None:
    r = self.r
    writers = r.writers
    result = r.task.evaluate("valid")
    latest = r.checkpointer.latest
    if not math.isfinite(result["loss"]):
      raise NonFiniteLossError(f"validation loss is {result['loss']} at step {step}; stopping. "
                               f"The last good checkpoint ({latest}) "
                               "is kept; lower --config.optim.learning_rate")
    self._check_divergence("validation loss", result["loss"], step)
    if r.learning_rate.after_eval(result["perplexity"]):
      logging.info("validation perplexity stalled: learning rate decay now %.4g",
                   float(r.learning_rate.decay.numpy()))
    try:
      samples = r.task.samples(step)
    except UserError as e:  # NaN logits: the weights diverged even if the loss still looked finite
      raise NonFiniteLossError(f"at step {step}: {e}; stopping. The last good checkpoint "
                               f"({latest}) is kept") from None
    writers.scalars("eval", step, {f"eval/{k}": v for k, v in result.items()
                                   if k not in ("num_tokens", "num_sentences", "iw_samples")})
    writers.scalars("train", step, r.task.train_figures())
    writers.text("eval", step, "eval/samples",
                 "\n\n".join(f"{k + 1}. " + s.replace("\n", " / ") for k, s in enumerate(samples)))
    extra = r.task.summary(result)
    logging.info("step %d: validation perplexity %.2f (%d tokens)%s", step, result["perplexity"],
                 result["num_tokens"], f"; {extra}" if extra else "")
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
          f"({self.r.checkpointer.latest or 'none'}) is kept; lower --config.optim.learning_rate "
          "or set --config.optim.clip_norm and run again")
    self._check_divergence("loss", loss, step)

  def _check_skips(self, s) -> None:
    """float16: stops the run once the last precision.STUCK_SKIPS steps or more were skipped
    (their all-reduced gradient norm not finite) and the loss scale is at its floor, before
    anything of them is saved."""
    for norm in s.grad_norms:
      self._skips_in_a_row = 0 if np.isfinite(norm) else self._skips_in_a_row + 1
    scale = self.r.loss_scale
    if (self._skips_in_a_row >= precision.STUCK_SKIPS
        and float(scale.value.numpy()) <= scale.floor):
      raise NonFiniteLossError(
          f"train.precision=float16: the gradients of the last {self._skips_in_a_row} steps "
          f"(to step {s.end}) were not finite, each step skipped, and the loss scale is at its "
          f"floor ({scale.floor:g}): an inf or NaN that no loss scale removes; stopping. The "
          f"last good checkpoint ({self.r.checkpointer.latest or 'none'}) is kept; train in "
          "bfloat16 or float32 (--config.train.precision) or lower --config.optim.learning_rate")

  def _check_divergence(self, what: str, loss: float, step: int) -> None:
    factor = self.divergence_factor
    if not factor or step <= self.r.config.optim.warmup_steps or loss <= factor * self.uniform_loss:
      return
    raise DivergedError(
        f"{what} {loss:.4g} at step {step} is above {factor:g} x ln V = "
        f"{factor * self.uniform_loss:.2f} (a uniform guess over the {len(self.r.vocab)} words "
        f"scores ln V = {self.uniform_loss:.2f}): the run diverged; stopping. The last good "
        f"checkpoint ({self.r.checkpointer.latest or 'none'}) is kept; lower "
        "--config.optim.learning_rate (or raise --config.train.divergence_factor, 0 = off)")

  def log_progress(self, step: int, loss: float, learning_rate: float, grad_norm: float,
                   perf: dict, eta_secs: float, metric_sums: dict | None = None) -> None:
    """metric_sums: the model's summed training metrics since the last line (its own scalars)."""
    r = self.r
    if self._steady is None:
      self._steady = (time.perf_counter(), step)
    extra = r.model.scalars(metric_sums, step) if metric_sums else {}
    r.writers.scalars("train", step, {
        "train/loss": loss, "train/perplexity": perplexity(loss),
        "optim/learning_rate": learning_rate, "optim/grad_norm": grad_norm, **perf, **extra})
    logging.info("step %d/%d | loss %.3f | ppl %.1f | lr %.3g | %.0f words/s | %.3f s/step | "
                 "%s left", step, r.total_steps, loss, perplexity(loss), learning_rate,
                 perf["perf/words_per_sec"], perf["perf/step_secs"], format_duration(eta_secs))

  def steady_words_per_sec(self, step: int) -> float | None:
    """Words/s from the first progress line to `step` (None if too short to tell)."""
    if self._steady is None or step <= self._steady[1]:
      return None
    return (step - self._steady[1]) * self.r.words_per_step / (time.perf_counter() - self._steady[0])

  def finish(self, step: int) -> dict:
    """Final validation (before saving: it checks for divergence), save, test, results.json."""
    r = self.r
    words_per_sec = self.steady_words_per_sec(step)
    self.ex.to_host(slots=True)
    if r.total_steps > r.start or self.last_valid is None:
      self.evaluate_and_sample(step)
    if step > r.start or not r.checkpointer.latest:
      self.save(step)
    test = r.task.evaluate("test")
    r.writers.scalars("eval", step, {f"eval/test_{k}": v for k, v in test.items()
                                     if k not in ("num_tokens", "num_sentences", "iw_samples")})
    r.writers.flush()
    results = {"step": step, "valid_perplexity": self.last_valid["perplexity"],
               "test_perplexity": test["perplexity"], "test_tokens": test["num_tokens"],
               "parameters": r.n_params, "samples": self.samples,
               "words_per_sec": words_per_sec}
    results.update({f"valid_{k}": v for k, v in self.last_valid.items()
                    if k not in ("loss", "perplexity", "num_tokens")})
    results.update({f"test_{k}": v for k, v in test.items()
                    if k not in ("loss", "perplexity", "num_tokens")})
    r.checkpointer.close()
    if r.is_chief:
      workdir_lib.write_json_atomically(os.path.join(r.workdir, RESULTS_FILE), results, indent=2)
      r.lock.release()
    extra = r.task.summary(test)
    logging.info("step %d: test perplexity %.2f (%d tokens)%s", step, test["perplexity"],
                 test["num_tokens"], f"; {extra}" if extra else "")
    return results

