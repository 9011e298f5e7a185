import pytest

from configs import common
from tfsys.errors import UserError
from tfsys.train.optim import LearningRate, make_optimizer


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


def test_optimizers():
  assert make_optimizer(_optim(name="adagrad", initial_accumulator=1.0)).initial_accumulator_value == 1.0
  with pytest.raises(UserError, match="unknown optimizer"):
    make_optimizer(_optim(name="lamb"))
