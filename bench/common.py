"""Helpers the benchmarks share."""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_WORKER_BATCH = 2


def median_ms(fn, reps: int, warmup: int = 2) -> float:
  """Median milliseconds of `reps` calls of fn (a tf.function; its result read back), after
  `warmup` untimed calls (the trace)."""
  import numpy as np
  for _ in range(warmup):
    fn().numpy()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn().numpy()
    times.append(time.perf_counter() - t)
  return float(np.median(times)) * 1e3


def background_busy(interval=1.0) -> float:
  """Fraction of the machine's CPU time busy while we sleep: other jobs skew every figure."""
  def snap():
    with open("/proc/stat") as f:
      v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]
  t1, i1 = snap()
  time.sleep(interval)
  t2, i2 = snap()
  return 1.0 - (i2 - i1) / max(1, t2 - t1)


def ps_cluster_command(workdir: str, backend: str, workers: int, backups: int, steps: int,
                       compute_ms: float, scale_ms: float, shape: float, straggler: list[str]):
  """scripts/launch_local.py training configs/ptb_char_cnn_lstm.py:smoke on 1 ps task, a chief
  and `workers` workers, with simulated compute and straggler delays, logging every 10 steps and
  doing nothing else between steps. Every worker computes on PER_WORKER_BATCH rows per step: the
  batch of one update is N of them (sync_backup), or one worker's (async_ps splits batch_size
  over its workers)."""
  gradients = workers if backend == "async_ps" else workers - backups
  return [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "--num_ps=1",
          f"--num_workers={workers}", "--", os.path.join(ROOT, "scripts", "train.py"),
          f"--config={os.path.join(ROOT, 'configs', 'ptb_char_cnn_lstm.py')}:smoke",
          f"--workdir={workdir}", f"--config.distribute.backend={backend}",
          f"--config.distribute.replicas_to_aggregate={workers - backups}",
          f"--config.distribute.total_num_replicas={workers}",
          "--config.distribute.intra_op_threads=1", "--config.distribute.log_workers_every=1000000",
          f"--config.train.num_steps={steps}", "--config.train.log_every=10",
          f"--config.train.batch_size={PER_WORKER_BATCH * gradients}",
          "--config.train.checkpoint_every=1000000", "--config.train.histogram_every=1000000",
          "--config.eval.every_steps=1000000", "--config.eval.max_tokens=200",
          "--config.monitor.noise_scale_every=0",
          f"--config.distribute.straggler.compute_ms={compute_ms}",
          f"--config.distribute.straggler.scale_ms={scale_ms}",
          f"--config.distribute.straggler.shape={shape}", *straggler]


def model_step_ms(config, dtype_name: str = "float32", jit_compile: bool = False,
                  steps: int = 20, vocab: int = 10_000) -> float:
  """Median ms of one training step of config's model on a synthetic batch of its shape, as
  the training loop computes it (tfsys/train/step.py's gradient, then an SGD update), with
  train.precision = dtype_name and train.jit_compile as given."""
  import numpy as np
  import tensorflow as tf
  import models
  from tfsys.train.precision import PRECISIONS
  from tfsys.train.step import gradient_step
  model = models.build(config.model, [f"w{i}" for i in range(vocab)], seed=0)
  model.compute_dtype = PRECISIONS[dtype_name]
  variables = model.trainable_variables
  rows, unroll = config.train.batch_size, config.train.unroll
  ids = np.random.default_rng(0).integers(0, vocab, size=(rows, unroll + 1))
  batch = {"inputs": tf.constant(ids[:, :-1], tf.int32),
           "targets": tf.constant(ids[:, 1:], tf.int32), "weights": tf.ones([rows, unroll]),
           "reset": tf.zeros([rows, 1], tf.bool)}
  gradient = gradient_step(model, variables, 1.0, jit_compile)

  @tf.function
  def step():
    loss, grads, _, _ = gradient(batch, model.initial_state(rows), tf.constant(3, tf.int64))
    for v, g in zip(variables, grads):
      if isinstance(g, tf.IndexedSlices):
        v.scatter_sub(tf.IndexedSlices(1e-3 * g.values, g.indices, g.dense_shape))
      else:
        v.assign_sub(1e-3 * g)
    return loss
  return median_ms(step, steps, warmup=3)
