import pytest

from configs import common
from tfsys.errors import UserError
from tfsys.train.optim import LearningRate, make_optimizer

pytestmark = pytest.mark.kernels   # numerics: .ci/run repeats these with oneDNN on and off


def _optim(**kw):
  c = common.base_config().optim
  c.update(kw)
  return c


def test_linear_scaling_with_gradual_warmup():
  # Goyal et al.: lr = base_lr * batch / base_batch, ramped linearly over warmup_steps.
  lr = LearningRate(_optim(learning_rate=0.1, scale_lr_with_batch=True, base_batch=256,
                           warmup_steps=10), global_batch=1024)
  assert float(lr(0)) == pytest.approx(0.4 * 1 / 10)
  assert float(lr(4)) == pytest.approx(0.4 * 5 / 10)
  assert float(lr(9)) == pytest.approx(0.4)
  assert float(lr(1000)) == pytest.approx(0.4)


def test_no_scaling_unless_asked():
  lr = LearningRate(_optim(learning_rate=0.1, base_batch=256), global_batch=1024)
  assert float(lr(0)) == pytest.approx(0.1)


def test_plateau_halves_when_eval_stalls():
  lr = LearningRate(_optim(learning_rate=1.0, schedule="plateau", plateau_threshold=1.0),
                    global_batch=20)
  assert not lr.after_eval(200.0)   # first evaluation: an improvement on infinity
  assert not lr.after_eval(150.0)   # improved by 50
  assert lr.after_eval(149.5)       # improved by only 0.5: halve
  assert float(lr(0)) == pytest.approx(0.5)
  assert lr.after_eval(160.0)       # worse: halve again
  assert float(lr(0)) == pytest.approx(0.25)


def test_constant_schedule_ignores_evals():
  lr = LearningRate(_optim(learning_rate=1.0), global_batch=20)
  lr.after_eval(10.0)
  assert not lr.after_eval(10.0) and float(lr(5)) == 1.0


@pytest.mark.parametrize("kw,msg", [({"schedule": "cosine"}, "unknown schedule"),
                                    ({"learning_rate": 0.0}, "must be positive")])
def test_bad_schedules(kw, msg):
  with pytest.raises(UserError, match=msg):
    LearningRate(_optim(**kw), global_batch=1)


def test_plateau_stops_at_the_floor_and_says_so_once(caplog):
  lr = LearningRate(_optim(learning_rate=1.0, schedule="plateau", plateau_threshold=1.0,
                           min_learning_rate=0.2), global_batch=20)
  lr.after_eval(100.0)
  with caplog.at_level("INFO"):
    assert lr.after_eval(100.0) and float(lr(0)) == pytest.approx(0.5)
    assert lr.after_eval(100.0) and float(lr(0)) == pytest.approx(0.25)
    assert lr.after_eval(100.0)          # 0.125 would be below the floor: clamped to it
    assert float(lr(0)) == pytest.approx(0.2)
    for _ in range(5):                   # stalls at the floor lower nothing
      assert not lr.after_eval(100.0)
    assert float(lr(0)) == pytest.approx(0.2)
  floor_lines = [r for r in caplog.records if "at its floor" in r.getMessage()]
  assert len(floor_lines) == 1 and "--config.optim.min_learning_rate" in floor_lines[0].getMessage()
  assert not lr.after_eval(50.0) and float(lr(0)) == pytest.approx(0.2)   # an improvement: kept


def test_the_default_floor_keeps_a_long_run_above_zero():
  # The issue: ~150 halvings of a float32 rate reach exactly 0, and training goes on doing nothing.
  stalled = lambda lr: [lr.after_eval(100.0) for _ in range(300)]  # noqa: E731
  lr = LearningRate(_optim(learning_rate=1.0, schedule="plateau"), global_batch=20)
  stalled(lr)
  assert float(lr(0)) == pytest.approx(common.base_config().optim.min_learning_rate, rel=1e-6)
  without = LearningRate(_optim(learning_rate=1.0, schedule="plateau", min_learning_rate=0.0),
                         global_batch=20)
  stalled(without)
  assert float(without(0)) == 0.0      # 0 asks for no floor: the old schedule


def test_the_floor_is_on_the_scaled_rate_and_warmup_still_starts_below_it():
  # Peak = 0.1 × 1024 / 256 = 0.4; the floor is an absolute rate, not a fraction of it.
  lr = LearningRate(_optim(learning_rate=0.1, scale_lr_with_batch=True, base_batch=256,
                           warmup_steps=10, schedule="plateau", min_learning_rate=0.3),
                    global_batch=1024)
  assert float(lr(0)) == pytest.approx(0.04)    # warm-up is not the plateau decay
  lr.after_eval(100.0)
  assert lr.after_eval(100.0) and float(lr(1000)) == pytest.approx(0.3)


def test_a_config_from_before_the_floor_gets_the_default():
  import json
  import ml_collections
  from tfsys.train.optim import MIN_LEARNING_RATE
  assert common.base_config().optim.min_learning_rate == MIN_LEARNING_RATE
  old = json.loads(common.base_config().optim.to_json())
  del old["min_learning_rate"]     # config.json of a workdir written before the field
  old.update(schedule="plateau", learning_rate=1.0)
  lr = LearningRate(ml_collections.ConfigDict(old), global_batch=20)
  for _ in range(300):
    lr.after_eval(100.0)
  assert float(lr(0)) == pytest.approx(MIN_LEARNING_RATE, rel=1e-6)


def test_a_checkpoint_decayed_to_zero_resumes_at_the_floor(tmp_path):
  # The checkpoint layout is unchanged: the variables of a schedule written before the floor
  # (decay, best_eval) restore one for one, and a decay already halved to 0 trains at the floor.
  import tensorflow as tf

  class Before(tf.Module):
    def __init__(self):
      super().__init__(name="learning_rate")
      self.decay = tf.Variable(0.0, trainable=False, name="decay")
      self.best_eval = tf.Variable(123.0, trainable=False, name="best_eval")

  path = tf.train.Checkpoint(learning_rate=Before()).write(
      str(tmp_path / "ckpt"))
  lr = LearningRate(_optim(learning_rate=1.0, schedule="plateau", min_learning_rate=0.01),
                    global_batch=20)
  tf.train.Checkpoint(learning_rate=lr).read(path).assert_consumed()
  assert float(lr.best_eval.numpy()) == 123.0
  assert float(lr(0)) == pytest.approx(0.01)
  assert not lr.after_eval(200.0) and float(lr(0)) == pytest.approx(0.01)
  assert float(lr.decay.numpy()) == pytest.approx(0.01)   # and the next checkpoint holds it


@pytest.mark.parametrize("kw,msg", [
    ({"min_learning_rate": -1e-3}, "must be >= 0"),
    ({"min_learning_rate": float("nan")}, "must be >= 0"),
    ({"min_learning_rate": 2.0}, "above the peak learning rate 1"),
    ({"min_learning_rate": 0.5, "scale_lr_with_batch": True, "base_batch": 40},
     r"above the peak learning rate 0.25 \(scaled with the batch")])
def test_bad_floors(kw, msg):
  with pytest.raises(UserError, match=msg) as e:
    LearningRate(_optim(learning_rate=0.5 if "base_batch" in kw else 1.0, schedule="plateau", **kw),
                 global_batch=20)
  assert "--config.optim.min_learning_rate" in str(e.value) and "\n" not in str(e.value)


def test_a_constant_rate_below_the_default_floor_is_fine():
  # The floor bounds the plateau decay only: its default must not reject a small constant rate.
  lr = LearningRate(_optim(learning_rate=1e-7), global_batch=20)
  assert not lr.after_eval(1.0) and float(lr(0)) == pytest.approx(1e-7)


def _step(name, grad, value=(1.0, 2.0), steps=1, **kw):
  import tensorflow as tf
  opt = make_optimizer(_optim(name=name, **kw))
  v = tf.Variable(list(value))
  opt.build([v])
  for _ in range(steps):
    opt.apply([grad], [v], tf.constant(0.1))
  return v.numpy(), opt


def test_sgd_and_momentum():
  import numpy as np
  import tensorflow as tf
  v, opt = _step("sgd", tf.constant([1.0, -1.0]))
  np.testing.assert_allclose(v, [0.9, 2.1])
  v, _ = _step("sgd", tf.constant([1.0, 0.0]), steps=2, momentum=0.5)
  np.testing.assert_allclose(v, [1.0 - 0.1 * 1.0 - 0.1 * 1.5, 2.0], rtol=1e-6)  # m: 1, then 1.5
  assert int(opt.iterations) == 1


def test_adagrad_dense_and_sparse_agree():
  import numpy as np
  import tensorflow as tf
  dense, _ = _step("adagrad", tf.constant([2.0, 0.0]), initial_accumulator=1.0)
  np.testing.assert_allclose(dense, [1.0 - 0.1 * 2.0 / np.sqrt(5.0), 2.0], rtol=1e-5)
  # The same gradient as two sparse rows with a repeated index (1.5 + 0.5 on row 0).
  sparse = tf.IndexedSlices(tf.constant([1.5, 0.5]), tf.constant([0, 0]), tf.constant([2]))
  got, _ = _step("adagrad", sparse, initial_accumulator=1.0)
  np.testing.assert_allclose(got, dense, rtol=1e-6)


def test_adam_first_step_is_lr_times_sign():
  import numpy as np
  import tensorflow as tf
  v, _ = _step("adam", tf.constant([3.0, -0.01]))
  np.testing.assert_allclose(v, [0.9, 2.1], rtol=1e-4)   # bias-corrected m/√v = sign(g)


def test_unknown_optimizer():
  with pytest.raises(UserError, match="unknown optimizer"):
    make_optimizer(_optim(name="lamb"))
