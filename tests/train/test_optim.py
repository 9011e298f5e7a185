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
