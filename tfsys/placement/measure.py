"""The cost model's figures for the devices of this machine, from a profiling run of seconds.

For each device: its speed on a float32 matmul of the size an LSTM LM's step is made of
([700, 200] x [200, 800] by default: batch 20 x 35 steps, 200 units, 4 gates), inside a
tf.function pinned to it; the slope between a chain of 2 and of 16 matmuls, so that the call's
own cost cancels; its launch cost per op, the slope of a chain of tiny ops. Logical CPU devices
share the host's cores: their matmuls run at once, in one function, give the pool's speed in all
(schedule.py: pools). Between each pair of device kinds: the time of a copy of a few MB and of
a few bytes (tf.identity under the other device) less the same on one device gives bandwidth and
latency. Memory: the host's available memory (/proc/meminfo) shared evenly by its logical CPU
devices; a GPU's what TensorFlow's allocator may use.

Figures depend on the machine and its load: they are not asserted in tests.
"""
import dataclasses
import statistics
import subprocess
import time

from tfsys.errors import UserError
from tfsys.placement.schedule import Device, Link, Links, canonical

SHORT, LONG = 2, 16   # matmuls in the two chains; the slope is one matmul's time
MAX_BANDWIDTH = 1e12  # bytes/s: what a copy too fast to time is taken to move


def _median_secs(fn, budget: float, runs: int = 3, most: int = 50, fastest=False) -> float:
  fn().numpy()   # traces and warms up
  times, t_end = [], time.perf_counter() + budget
  while len(times) < runs or (len(times) < most and time.perf_counter() < t_end):
    t0 = time.perf_counter()
    fn().numpy()
    times.append(time.perf_counter() - t0)
  return min(times) if fastest else statistics.median(times)


def _host_available_bytes() -> int:
  with open("/proc/meminfo", encoding="ascii") as f:
    for line in f:
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024
  raise OSError("/proc/meminfo has no MemAvailable line")


def _gpu_memory_bytes(name: str) -> int:
  """What TensorFlow's allocator may use on the GPU, else the card's total memory."""
  try:
    from tensorflow.python.client import device_lib   # pylint: disable=import-outside-toplevel
    for d in device_lib.list_local_devices():
      if canonical(d.name) == name and d.memory_limit:
        return int(d.memory_limit)
  except Exception:   # pylint: disable=broad-except
    pass
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits",
                          "-i", name.split(":")[1]], capture_output=True, text=True, check=True)
    return int(float(out.stdout.split()[0]) * 2**20)
  except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
    raise UserError(f"cannot tell how much memory {name} has: describe the devices instead "
                    "(auto.parse_devices: NAME=MEMORY@GFLOPS,...)") from None


def memory_limits(device_names) -> list:
  """Devices named as rules name them with their memory only (speeds unknown: 1 GFLOP/s):
  enough to check that a plan fits. Logical CPUs share the host's available memory evenly."""
  names = [canonical(n) for n in device_names]
  cpus = sum(n.startswith("CPU:") for n in names)
  host = _host_available_bytes() if cpus else 0
  return [Device(n, n.split(":")[0], 1.0, host // cpus if n.startswith("CPU:")
                 else _gpu_memory_bytes(n)) for n in names]


def measure_devices(device_names, seconds: float = 3.0, shape=(700, 200, 800),
                    copy_bytes: int = 4 * 2**20):
  """(devices, links) for `device_names` of this process ("/device:CPU:0", "CPU:1", "GPU:0")
  from about `seconds` of profiling. Call after the logical devices are configured."""
  import tensorflow as tf   # pylint: disable=import-outside-toplevel
  names = [canonical(n) for n in device_names]
  m, k, n = shape
  flops = 2.0 * m * k * n
  pairs = len({tuple(sorted((a.split(":")[0], b.split(":")[0]))) for a in names for b in names
               if a != b})
  budget = seconds / (4 * len(names) + 1 + 4 * pairs) / 3   # per timed function (+ tracing)

  def chain(dev, reps, traced=True):
    with tf.device(dev):
      # Variables, not constants, which grappler would fold away.
      a = tf.Variable(tf.random.normal([m, k], seed=1))
      b = tf.Variable(tf.random.normal([k, n], stddev=k ** -0.5, seed=2))   # x keeps its scale
      bt = tf.Variable(tf.random.normal([n, k], stddev=n ** -0.5, seed=3))

    def run():
      with tf.device(dev):
        x = a.read_value()
        for r in range(reps):
          x = tf.matmul(x, b) if r % 2 == 0 else tf.matmul(x, bt)
        return tf.reduce_sum(x[:1, :1])
    return tf.function(run) if traced else run

  def tiny(dev, reps):
    with tf.device(dev):
      x0 = tf.Variable(tf.ones([1]))

    @tf.function
    def run():
      with tf.device(dev):
        x = x0.read_value()
        for _ in range(reps):
          x = tf.sin(x)
        return x
    return run

  devices, cpus = [], []
  for name in names:
    dev = "/device:" + name
    # (the fastest call of each: the call's own cost is noisy next to 240 tiny ops)
    launch = max((_median_secs(tiny(dev, 256), budget, fastest=True)
                  - _median_secs(tiny(dev, 16), budget, fastest=True)) / 240, 1e-8)
    per_matmul = (_median_secs(chain(dev, LONG), budget) - _median_secs(chain(dev, SHORT), budget)
                  ) / (LONG - SHORT)
    gflops = flops / max(per_matmul - launch, per_matmul / 2, 1e-9) / 1e9
    kind = name.split(":")[0]
    memory = _gpu_memory_bytes(name) if kind == "GPU" else 0
    devices.append(Device(name, kind, gflops, memory, launch))
    if kind == "CPU":
      cpus.append(len(devices) - 1)
  host = _host_available_bytes()
  for j in cpus:
    devices[j] = dataclasses.replace(devices[j], memory_bytes=host // len(cpus))
  if len(cpus) > 1:   # the pool: every logical CPU's chain at once, in one graph
    runs = [chain("/device:" + devices[j].name, LONG, traced=False) for j in cpus]

    @tf.function
    def together():
      return tf.add_n([r() for r in runs])
    pool = len(cpus) * LONG * flops / _median_secs(together, budget) / 1e9
    for j in cpus:
      devices[j] = dataclasses.replace(devices[j], pool="host", pool_gflops=pool)
  return devices, _measure_links(tf, devices, budget, copy_bytes)


def _measure_links(tf, devices, budget: float, copy_bytes: int) -> Links:
  """Bandwidth and latency between one pair of devices of each pair of kinds."""

  def copy(src, dst, nbytes):
    with tf.device("/device:" + src):
      x = tf.Variable(tf.ones([max(nbytes // 4, 1)]))

    @tf.function
    def run():
      with tf.device("/device:" + dst):
        return tf.reduce_sum(tf.identity(x.read_value())[:1])
    return run

  kinds, default = {}, Link(MAX_BANDWIDTH, 0.0)
  for i, a in enumerate(devices):
    for b in devices[i + 1:]:
      if (a.kind, b.kind) in kinds or (b.kind, a.kind) in kinds:
        continue
      big = (_median_secs(copy(a.name, b.name, copy_bytes), budget)
             - _median_secs(copy(a.name, a.name, copy_bytes), budget))
      small = (_median_secs(copy(a.name, b.name, 4), budget)
               - _median_secs(copy(a.name, a.name, 4), budget))
      latency = max(small, 0.0)
      moving = big - latency
      bandwidth = copy_bytes / moving if moving > copy_bytes / MAX_BANDWIDTH else MAX_BANDWIDTH
      kinds[a.kind, b.kind] = Link(min(bandwidth, MAX_BANDWIDTH), latency)
  return Links(default, kinds=kinds)


def step_timers(config, vocab_size: int, assignments, replicas: int = 1):
  """[fn() -> loss] per prefix of `assignments` ({part: devices}): one training step (loss,
  gradients, update) of config's model on one replica's batch of synthetic ids, one copy of the
  model per assignment, the copies run side by side in one tf.function (the first function
  runs the first copy alone, the second the first two at once, ...): the profiling runs the
  cost model is calibrated on."""
  import numpy as np   # pylint: disable=import-outside-toplevel
  import tensorflow as tf   # pylint: disable=import-outside-toplevel
  import models   # pylint: disable=import-outside-toplevel
  from models.sharded import variables_of   # pylint: disable=import-outside-toplevel
  from models.variables import DevicePlacement, parameters   # pylint: disable=import-outside-toplevel
  words = [f"w{i}" for i in range(vocab_size)]
  rows, steps = max(config.train.batch_size // replicas, 1), config.train.unroll
  ids = np.random.default_rng(0).integers(0, vocab_size, size=(rows, steps + 1))
  batch = {"inputs": tf.constant(ids[:, :-1], tf.int32),
           "targets": tf.constant(ids[:, 1:], tf.int32), "weights": tf.ones([rows, steps])}
  copies = []
  for assignment in assignments:
    model = models.build(config.model, words, placement=DevicePlacement(assignment))
    copies.append((model, variables_of(parameters(model))))

  def one_step(model, variables):
    with tf.GradientTape() as tape:
      loss, _, _ = model.loss(batch, model.initial_state(rows), training=True, step=0)
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):   # SGD: the update's cost, not its maths, matters
      if isinstance(g, tf.IndexedSlices):
        v.scatter_sub(tf.IndexedSlices(1e-9 * g.values, g.indices, g.dense_shape))
      else:
        v.assign_sub(1e-9 * g)
    return loss

  # One trace for every count: copy k runs when count > k (tracing a step costs seconds).
  @tf.function
  def steps(count):
    total = one_step(*copies[0])
    for k, copy in enumerate(copies[1:], start=1):
      total += tf.cond(count > k, lambda copy=copy: one_step(*copy), lambda: 0.0)
    return total
  return [lambda n=n: steps(tf.constant(n)) for n in range(1, len(copies) + 1)]


def calibrate(config, vocab_size: int, devices, replicas: int = 1, seconds: float = 3.0):
  """devices with their speeds scaled so that the cost model predicts the measured step of the
  whole model on one device of each kind, and, for logical CPUs sharing the host's cores, the
  pool's speed taken from two such steps run at once on two of them.

  A matmul's speed alone overrates a device on a real step (the recurrence's many small ops,
  the element-wise work, the executor's overheads; measured here: the word LM predicted 27%
  under its step on one logical CPU), and how well two logical CPUs overlap depends on the ops
  they run (matmul chains here overlapped 1.0-1.6x from run to run); the step itself is the
  figure that counts. The one-device plan is then the calibration point; every other plan is
  predicted from it."""
  from tfsys.placement import auto, graph as graph_lib   # pylint: disable=import-outside-toplevel
  step_graph = graph_lib.config_graph(config, vocab_size, replicas=replicas)
  parts = list(step_graph.parts)
  out, by_kind = list(devices), {}
  for k, d in enumerate(devices):
    by_kind.setdefault(d.kind, []).append(k)
  budget = seconds / (2 * len(by_kind) + 1)   # per timed function, after its trace
  for kind, members in by_kind.items():
    first = devices[members[0]]
    one = {p: (first.name,) for p in parts}
    pair = kind == "CPU" and len(members) > 1 and first.pool
    assignments = [one] + ([{p: (devices[members[1]].name,) for p in parts}] if pair else [])
    timers = step_timers(config, vocab_size, assignments, replicas)
    measured = _median_secs(timers[0], budget)
    predicted = auto.predict(step_graph, one, devices, check_memory=False).step_secs
    scale = predicted / measured   # < 1: the device is slower on the step than on a matmul
    for k in members:
      out[k] = dataclasses.replace(devices[k], gflops=devices[k].gflops * scale,
                                   launch_secs=devices[k].launch_secs / scale,
                                   pool_gflops=devices[k].pool_gflops * scale)
    if pair:
      together = _median_secs(timers[1], budget)
      pool = 2 * measured / together * out[members[0]].gflops   # the pair's speed in all
      for k in members:
        out[k] = dataclasses.replace(out[k], pool_gflops=pool * len(members) / 2)
  return out
