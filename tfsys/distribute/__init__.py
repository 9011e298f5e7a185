"""Distribution backends: a `tf.distribute` strategy the training loop runs its step through.

Only `single` (TensorFlow's default strategy: one device) exists so far; the all-reduce and
parameter-server backends plug in here without changing the loop.
"""
import tensorflow as tf

from tfsys.errors import UserError

BACKENDS = ("single",)


def make_strategy(distribute_config) -> tf.distribute.Strategy:
  backend = distribute_config.backend
  if backend == "single":
    return tf.distribute.get_strategy()
  raise UserError(f"unknown distribution backend {backend!r} (--config.distribute.backend); "
                  f"available: {', '.join(BACKENDS)}")
