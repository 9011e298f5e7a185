"""The set-up of one training process: data, model, optimizer, checkpoints, TensorBoard writers.

The controller (controller.py) and every executor (allreduce.py, ps/) read what they need from
one `Run`; none of them knows which model it trains.
"""
import contextlib

import numpy as np
import tensorflow as tf
from absl import logging

import models
from models.sharded import variables_of
from models.variables import DevicePlacement, ServerPlacement, WholeVariables, parameters
from tfsys import data
from tfsys.errors import EXIT_DIVERGED, UserError
from tfsys.monitor import Writers
from tfsys.placement import placer
from tfsys.train import precision, tasks
from tfsys.train import workdir as workdir_lib
from tfsys.train.checkpoint import Checkpointer
from tfsys.train.optim import LearningRate, make_optimizer


class DivergedError(UserError):
  """Training diverged: the loss went far above a uniform guess's (train.divergence_factor).

  The last good checkpoint is left in place: a checkpoint is written only after the step's
  loss passed this check.
  """
  exit_status = EXIT_DIVERGED


class NonFiniteLossError(DivergedError):
  """The loss (or the weights, or float16's gradients step after step) became NaN or infinite;
  the last good checkpoint is left in place."""


def check(config):
  t = config.train
  for name in ("log_every", "checkpoint_every", "keep_checkpoints", "steps_per_loop"):
    if t.get(name, 1) <= 0:   # (configs saved before steps_per_loop existed lack it)
      raise UserError(f"--config.train.{name} must be positive, got {t[name]}")
  if config.optim.loss_per not in ("token", "sequence"):
    raise UserError(f"--config.optim.loss_per must be token or sequence, got {config.optim.loss_per!r}")
  if not 0.0 <= config.model.dropout < 1.0:
    raise UserError(f"--config.model.dropout must be in [0, 1), got {config.model.dropout}")
  precision.check(config)   # a bad choice is one line now, not after the data loads
  precision.allreduce_dtype(config)
  if t.get("jit_compile", False):
    if placer.mode(config) != "none":
      raise UserError("--config.train.jit_compile=True with --config.placement: XLA compiles "
                      "the step for one device, which a placed replica spans several of; use one")
    if config.model.get("num_samples", 0) > 0:
      raise UserError("--config.train.jit_compile=True with a sampled softmax "
                      f"(--config.model.num_samples={config.model.num_samples}): XLA compiles "
                      "fixed shapes, and the candidate sampler draws until it has that many "
                      "distinct ids (a run-time count); use one")
  factor = t.divergence_factor
  if factor and not factor > 1.0:
    raise UserError(f"--config.train.divergence_factor must be above 1 (or 0 = off), got {factor}")


class Run:
  """The set-up of one training process.

  The global batch (train.batch_size) is cut into `replicas` blocks of `local_batch` rows, one
  gradient each; `gradients_per_update` of them make one update (all of them, except under
  async_ps, where each worker's gradient is an update of its own). The training stream is cut
  into `data_shards` × `local_batch` rows, one block per shard (a replica, or a worker of the
  parameter-server backends, which may have more workers than gradients per update). What the
  data are and how the model is evaluated is the task's business (tasks.py).
  """

  def __init__(self, config, workdir: str, backend):
    check(config)
    self.config, self.workdir, self.backend = config, workdir, backend
    self.is_chief = backend.is_chief
    strategy = backend.strategy
    # One trainer per workdir: the chief holds it before it writes anything there.
    self.lock = workdir_lib.hold(workdir) if self.is_chief else None
    self.resuming = workdir_lib.prepare(config, workdir, write=self.is_chief)
    tf.random.set_seed(config.seed)
    replicas, data_shards = backend.replicas, backend.data_shards
    self.replicas, self.gradients_per_update = replicas, backend.gradients_per_update
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
    # Updates per global batch: one, or under async_ps one per worker's gradient.
    updates = replicas // self.gradients_per_update
    if config.train.num_steps:
      self.total_steps = config.train.num_steps
    elif steps_per_epoch:
      self.total_steps = config.train.num_epochs * steps_per_epoch * updates
    else:
      raise UserError("this corpus is streamed, so epochs are not counted: set --config.train.num_steps")
    self.eval_every = config.eval.every_steps or (steps_per_epoch or 10_000) * updates
    self.words_per_step = self.task.words_per_step / updates
    self.per_token_scale = self.task.per_token_scale

    # The model declares its variables; the placement creates them: whole under the strategy
    # (mirrored over its replicas), as a ps client's working copies of the ps tasks' state, or
    # each part on the devices of this host that config.placement gives it.
    self.placement, self.plan = self._placement(config, backend)
    # A placed replica's variables are its own, where the placement puts them (under
    # multi_worker every worker applies the same all-reduced update to its copy); the strategy
    # would mirror them on its one device per replica instead.
    placed = isinstance(self.placement, DevicePlacement) and backend.ps is None
    with contextlib.nullcontext() if placed else strategy.scope():
      self.model = models.build(config.model, self.vocab.words, seed=config.seed,
                                placement=self.placement)
      precision.apply(self.model, config)
      self.parameters = parameters(self.model)
      self.optimizer = make_optimizer(config.optim)
      self.optimizer.build(self.parameters)  # in scope: placed like the variables
    with strategy.scope():
      self.learning_rate = LearningRate(config.optim, batch)
      self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
      self.loss_scale = (precision.LossScale() if precision.compute_dtype(config) == tf.float16
                         else None)
    self.variables = variables_of(self.parameters)   # a split table's shards one by one
    # The LSTM state of the whole global batch, for checkpoints only; during training each
    # replica carries its own rows.
    self.carried = tf.nest.map_structure(lambda s: tf.Variable(s, trainable=False),
                                         self.model.initial_state(batch))
    self.carries_state = bool(tf.nest.flatten(self.carried))
    self.checkpointer = Checkpointer(
        workdir, config.train.keep_checkpoints, self.is_chief, backend.task_name,
        model=self.model, optimizer=self.optimizer, step=self.step_var,
        learning_rate=self.learning_rate, lstm_state=list(tf.nest.flatten(self.carried)),
        **({"loss_scale": self.loss_scale} if self.loss_scale is not None else {}))
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
    if self.plan is not None and self.is_chief:
      placer.write(workdir, self.plan)
      self.writers.text("train", self.start, "placement", placer.table(self.plan))
    self.task.bind(self.model)

  def _placement(self, config, backend):
    """The placement of this process's model, and the plan's record (None if not placed)."""
    if placer.mode(config) == "none":
      if backend.ps is not None:
        return ServerPlacement(backend.ps.ps_devices, config.distribute.shard_min_rows), None
      return WholeVariables(), None
    kind = models.kind(config.model)
    parts = placer.parts(kind, config.model)
    cluster = backend.cluster
    host = f"/job:{cluster.task_type}/replica:0/task:{cluster.task_index}" if cluster else ""
    available = placer.local_devices(host)
    plan = None
    if placer.mode(config) == "auto":
      if backend.ps is not None:
        raise UserError(f"--config.placement.mode=auto is not available under {backend.ps.kind}"
                        " (its chief and workers would each measure and place on their own): "
                        "print a plan with scripts/place.py and give it as placement.rules")
      devices, links = placer.described_devices(config, available)
      plan = placer.auto_plan(config, len(self.vocab),
                              [d.name for d in devices] if devices else available,
                              backend.replicas, devices, links)
      logging.info("[%s] the auto placer's plan:\n%s", backend.task_name, plan.table())
      assignment = plan.device_tuples()
      if cluster is not None:
        assignment, chunks = placer.agree(backend.strategy, assignment, available,
                                          0 if plan.unplaced else plan.chunks)
        plan.unplaced, plan.chunks = chunks == 0, max(chunks, 1)
    else:
      assignment = placer.assignment(config, parts, available)
      placer.check_memory(config, len(self.vocab), assignment, available, backend.replicas)
    record = placer.record(config, assignment, available,
                           models.variable_specs(config.model, len(self.vocab)), plan)
    if plan is not None and plan.unplaced:   # placement cannot help: nothing placed
      logging.info("[%s] placement: none (%s)", backend.task_name,
                   plan.chosen if cluster is None else "worker 0's plan places nothing")
      return WholeVariables(), record
    logging.info("[%s] placement: %s", backend.task_name,
                 ", ".join(f"{p} on {'+'.join(d)}" for p, d in assignment.items()))
    chunks = plan.chunks if plan is not None else placer.chunks(config)
    if backend.ps is None:
      return DevicePlacement(assignment, host, chunks), record
    split = [p for p, d in assignment.items() if len(d) > 1]
    if split:
      raise UserError(f"--config.placement splits {', '.join(split)} over several devices; "
                      f"under {backend.ps.kind} the tables are split over the ps tasks "
                      "(--config.distribute.shard_min_rows): give each part one device")
    placement = ServerPlacement(backend.ps.ps_devices, config.distribute.shard_min_rows,
                                assignment, host)
    placement.chunks = chunks
    return placement, record

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
    logging.info("saved %s", path)
