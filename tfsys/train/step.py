"""The one training step: the gradient of a model's loss on a batch, a pure function.

Every backend computes its gradients here: the all-reduce backends inside `strategy.run` (one
call per replica, before their all-reduce), the parameter-server workers before they push
(tfsys/train/ps/workers.py). Distribution (the all-reduce, the push to the ps, clipping and the
update) is the executor's, around it, as flax's `train_step` is pure and pmap is added outside.
"""
import tensorflow as tf


def reset_state(state, reset):
  """The carried state, zeroed where `reset` (a window that starts the text again) says."""
  return tf.nest.map_structure(lambda s: tf.where(reset, tf.zeros_like(s), s), state)


def sq_norm(grads):
  """Squared L2 norm of a gradient list; sparse rows are summed per index first (densified)."""
  return tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in grads if g is not None])


def gradient_step(model, variables, scale: float, jit_compile: bool = False, loss_scale=None):
  """fn(batch, state, step, replica) -> (loss, gradients, metric sums, new state).

  The state is reset in the rows where the batch starts a new stream row (batch["reset"]). The
  gradients are those of `loss × scale`: an all-reduce replica passes per_token_scale / replicas
  so that the summed gradients are the gradient of the global-batch mean; loss_per="sequence"
  makes per_token_scale the unroll length (the objective of Zaremba et al. 2014 and Kim et al.
  2016, which their lr = 1 with clipping at 5 was tuned for). `step` and `replica` seed the
  step's random draws (dropout, sampled negatives): a step recomputed draws the same.

  jit_compile (train.jit_compile): the forward and backward compiled by XLA as one cluster (the
  update and the all-reduce stay outside it). Measured on this project's CPUs it pays only for
  the word LM in float32 (README: Speed), so it is off by default. XLA draws its own random
  numbers: the same (seed, step, replica) gives other dropout masks than without it, still a
  function of them alone (a workdir keeps its setting: workdir.RESUME_KEYS).

  loss_scale (float16: tfsys.train.precision.LossScale): the backward pass starts from the loss
  times its value, and the gradients come back divided by it (not finite where it overflowed).
  """
  def fn(batch, state, step, replica=None):
    state = reset_state(state, batch["reset"])
    # A replica of an all-reduce strategy finds its index in the replica context itself.
    where = {} if replica is None else {"replica": replica}
    with tf.GradientTape() as tape:
      loss, metrics, new_state = model.loss(batch, state, training=True, step=step, **where)
      scaled = loss * scale
      if loss_scale is not None:
        scaled = scaled * loss_scale.value
    grads = tape.gradient(scaled, variables)
    if loss_scale is not None:
      grads = loss_scale.unscale(grads)
    return loss, grads, metrics, new_state
  if jit_compile:
    return tf.function(fn, jit_compile=True, reduce_retracing=True)
  return fn
