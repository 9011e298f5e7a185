"""train.jit_compile: the forward and backward under XLA compute what they compute without it
(its random draws are XLA's own: the same seed gives other dropout masks than without XLA, so
the comparison is without dropout, and a workdir keeps its setting); it is refused where a
replica spans several devices. distribute.allreduce_dtype=bfloat16: the all-reduce sends
rounded gradients and gives float32 back, dense and sparse."""
import numpy as np
import pytest
import tensorflow as tf

import models
from configs import ptb_char_cnn_lstm, ptb_word_lstm
from tfsys.errors import UserError
from tfsys.train import run
from tfsys.train.step import gradient_step

pytestmark = pytest.mark.kernels   # numerics: .ci/run repeats these with oneDNN on and off


@pytest.mark.parametrize("module", [ptb_word_lstm, ptb_char_cnn_lstm])
def test_xla_gives_the_loss_gradients_and_state_of_the_plain_step(module):
  c = module.get_config("smoke")
  c.model.dropout = c.model.embedding_dropout = 0.0
  words = ["<unk>", "<eos>"] + [f"w{i}" for i in range(38)]
  model = models.build(c.model, words, seed=2)
  variables = model.trainable_variables
  ids = tf.constant(np.random.default_rng(0).integers(0, 40, size=(3, 9)), tf.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([3, 8]),
           "reset": tf.zeros([3, 1], tf.bool)}
  step = tf.constant(4, tf.int64)
  plain = tf.function(gradient_step(model, variables, 1.0))(batch, model.initial_state(3), step)
  xla = gradient_step(model, variables, 1.0, jit_compile=True)(batch, model.initial_state(3), step)
  (loss, grads, metrics, state), (xloss, xgrads, xmetrics, xstate) = plain, xla
  np.testing.assert_allclose(float(xloss), float(loss), rtol=1e-5)
  np.testing.assert_allclose(float(xmetrics["nll_sum"]), float(metrics["nll_sum"]), rtol=1e-5)
  for var, g, xg in zip(variables, grads, xgrads):
    np.testing.assert_allclose(tf.convert_to_tensor(xg).numpy(), tf.convert_to_tensor(g).numpy(),
                               rtol=1e-3, atol=1e-6, err_msg=var.name)
  for s, xs in zip(tf.nest.flatten(state), tf.nest.flatten(xstate)):
    np.testing.assert_allclose(xs.numpy(), s.numpy(), rtol=1e-4, atol=1e-6)


def test_xla_draws_are_a_function_of_seed_step_and_replica():
  c = ptb_word_lstm.get_config("smoke")
  c.model.dropout = c.model.embedding_dropout = 0.5
  c.model.init_scale = 0.5            # masks move the loss well above rounding
  model = models.build(c.model, ["<unk>", "<eos>"] + [f"w{i}" for i in range(38)], seed=2)
  ids = tf.constant(np.random.default_rng(0).integers(0, 40, size=(3, 9)), tf.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([3, 8]),
           "reset": tf.zeros([3, 1], tf.bool)}
  xla = gradient_step(model, model.trainable_variables, 1.0, jit_compile=True)
  loss = lambda step, replica: float(xla(batch, model.initial_state(3), tf.constant(step, tf.int64),
                                         replica)[0])
  first = loss(4, 0)
  assert loss(4, 0) == first and len({first, loss(5, 0), loss(4, 1)}) == 3


def test_xla_with_placement_or_a_sampled_softmax_is_one_clear_error():
  c = ptb_word_lstm.get_config("smoke")
  c.train.jit_compile = True
  run.check(c)                               # alone it is fine
  c.placement.mode = "rules"
  c.placement.rules = "softmax=CPU:1"
  with pytest.raises(UserError, match="jit_compile=True with --config.placement"):
    run.check(c)
  c = ptb_word_lstm.get_config("smoke")
  c.train.jit_compile, c.model.num_samples = True, 10
  with pytest.raises(UserError, match="jit_compile=True with a sampled softmax"):
    run.check(c)


def test_bfloat16_for_a_model_without_it_is_refused_before_any_data_is_read():
  from configs import ptb_vae
  c = ptb_vae.get_config("smoke")
  run.check(c)
  c.train.precision = "bfloat16"
  with pytest.raises(UserError, match="implemented for the LSTM LMs; the sentence_vae model"):
    run.check(c)


def test_the_all_reduce_in_bfloat16_sends_rounded_gradients_and_returns_float32():
  from tfsys.train.allreduce import all_reduce_sum
  from tfsys.train.precision import allreduce_dtype
  dense = tf.constant([[1.0 + 2 ** -12, 3.0]])               # 1 + 2^-12 is not a bf16
  sparse = tf.IndexedSlices(tf.constant([[0.1, 0.2]]), tf.constant([3]), tf.constant([5, 2]))
  ctx = tf.distribute.get_replica_context()                   # the default strategy's: 1 replica
  same = all_reduce_sum(ctx, [dense, sparse])
  assert float(same[0][0, 0]) == 1.0 + 2 ** -12
  rounded = all_reduce_sum(ctx, [dense, sparse], tf.bfloat16)
  assert rounded[0].dtype == tf.float32 and float(rounded[0][0, 0]) == 1.0
  assert isinstance(rounded[1], tf.IndexedSlices) and rounded[1].values.dtype == tf.float32
  np.testing.assert_allclose(rounded[1].values.numpy(), [[0.1, 0.2]], rtol=2 ** -8)
  assert list(rounded[1].indices.numpy()) == [3]
  c = ptb_word_lstm.get_config("smoke")
  assert allreduce_dtype(c) == tf.float32
  c.distribute.allreduce_dtype = "int8"
  with pytest.raises(UserError, match="allreduce_dtype must be one of float32, bfloat16"):
    run.check(c)


def test_the_loss_scale_halves_on_overflow_and_doubles_after_a_period_of_finite_steps():
  from tfsys.train.precision import LossScale
  ls = LossScale(initial=8.0, period=3)
  history = []
  for finite in (True, True, False, True, True, True, True, False, False, False, False, False):
    ls.update(tf.constant(finite))
    history.append(float(ls.value.numpy()))
  assert history == [8, 8, 4, 4, 4, 8, 8, 4, 2, 1, 1, 1]   # never below 1
  assert int(ls.skipped.numpy()) == 6 and int(ls.good_steps.numpy()) == 0
  dense, sparse = ls.unscale([tf.constant([2.0, 4.0]),
                              tf.IndexedSlices(tf.constant([[8.0]]), tf.constant([1]), [3, 1])])
  assert dense.numpy().tolist() == [2.0, 4.0] and sparse.values.numpy().tolist() == [[8.0]]


def test_float16_gradients_with_the_loss_scale_are_the_unscaled_ones_or_not_finite():
  from tfsys.train.precision import LossScale
  c = ptb_word_lstm.get_config("smoke")
  c.model.dropout = c.model.embedding_dropout = 0.0
  model = models.build(c.model, ["<unk>", "<eos>"] + [f"w{i}" for i in range(38)], seed=2)
  model.compute_dtype = tf.float16
  variables = model.trainable_variables
  ids = tf.constant(np.random.default_rng(0).integers(0, 40, size=(3, 9)), tf.int32)
  batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": tf.ones([3, 8]),
           "reset": tf.zeros([3, 1], tf.bool)}
  step = tf.constant(4, tf.int64)
  plain = gradient_step(model, variables, 1.0)(batch, model.initial_state(3), step)[1]
  ls = LossScale(initial=1024.0)
  scaled = gradient_step(model, variables, 1.0, loss_scale=ls)(batch, model.initial_state(3), step)[1]
  for var, g, sg in zip(variables, plain, scaled):
    g, sg = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(sg).numpy()
    assert sg.dtype == np.float32, var.name
    assert np.abs(sg - g).max() <= 0.01 * np.abs(g).max() + 1e-6, var.name
  ls.value.assign(2.0 ** 60)   # float16's largest is 65504: the backward overflows
  over = gradient_step(model, variables, 1.0, loss_scale=ls)(batch, model.initial_state(3), step)[1]
  assert not np.isfinite(float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in over])))


def test_float16_training_skips_overflowing_steps_and_keeps_its_loss_scale(tmp_path, monkeypatch):
  """A run that starts with a scale that overflows float16 skips those steps (no update: the
  optimizer's step count stays 0), halving the scale each time; the checkpoint keeps it. At the
  default scale a float16 run trains."""
  import math
  from tfsys.train import precision, train_and_evaluate
  c = ptb_word_lstm.get_config("smoke")
  c.train.precision = "float16"
  c.train.num_steps, c.eval.max_tokens = 3, 200
  default_init = precision.LossScale.__init__.__defaults__
  monkeypatch.setattr(precision.LossScale.__init__, "__defaults__", (2.0 ** 60, 2000))
  train_and_evaluate(c, str(tmp_path / "over"))
  reader = tf.train.load_checkpoint(str(tmp_path / "over" / "checkpoints" / "ckpt-3"))
  value = lambda name: reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")
  assert value("loss_scale/value") == 2.0 ** 57 and value("loss_scale/skipped") == 3
  assert value("step") == 3 and value("optimizer/iterations") == 0
  monkeypatch.setattr(precision.LossScale.__init__, "__defaults__", default_init)
  c.train.num_steps = 12
  results = train_and_evaluate(c, str(tmp_path / "fine"))
  assert results["step"] == 12 and math.isfinite(results["test_perplexity"])
  reader = tf.train.load_checkpoint(str(tmp_path / "fine" / "checkpoints" / "ckpt-12"))
  assert value("optimizer/iterations") >= 10   # at most a step or two skipped on the way


def test_float16_stops_with_one_line_when_its_gradients_stay_not_finite(tmp_path, monkeypatch):
  """Steps skipped precision.STUCK_SKIPS times in a row (here 3, from a scale that overflows
  every step) with the loss scale at its floor (here 2^58) stop the run with one error that
  names float16, before any of them is saved: the call of steps 3-4 ends the streak, before
  step 4's checkpoint."""
  from tfsys.train import precision, train_and_evaluate
  from tfsys.train.run import NonFiniteLossError
  c = ptb_word_lstm.get_config("smoke")
  c.train.precision = "float16"
  c.train.num_steps, c.train.steps_per_loop, c.train.checkpoint_every = 8, 2, 4
  c.eval.max_tokens = 200
  monkeypatch.setattr(precision.LossScale.__init__, "__defaults__", (2.0 ** 60, 2000))
  monkeypatch.setattr(precision.LossScale, "floor", 2.0 ** 58)
  monkeypatch.setattr(precision, "STUCK_SKIPS", 3)
  with pytest.raises(NonFiniteLossError, match=r"float16: the gradients of the last 4 steps "
                     r"\(to step 4\) were not finite, each step skipped, and the loss scale is "
                     r"at its floor \(2\.88\d*e\+17\)"):
    train_and_evaluate(c, str(tmp_path / "stuck"))
  assert tf.train.latest_checkpoint(str(tmp_path / "stuck" / "checkpoints")) is None


def test_float16_does_not_stop_while_its_loss_scale_can_still_halve(tmp_path, monkeypatch):
  """The same skips above the floor (1, by default) are the scale's to fix: the run goes on."""
  from tfsys.train import precision, train_and_evaluate
  c = ptb_word_lstm.get_config("smoke")
  c.train.precision = "float16"
  c.train.num_steps, c.train.steps_per_loop, c.eval.max_tokens = 4, 2, 200
  monkeypatch.setattr(precision.LossScale.__init__, "__defaults__", (2.0 ** 60, 2000))
  monkeypatch.setattr(precision, "STUCK_SKIPS", 3)
  assert train_and_evaluate(c, str(tmp_path / "halving"))["step"] == 4
