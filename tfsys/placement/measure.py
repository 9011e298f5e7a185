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
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time

from absl import logging

from tfsys.errors import UserError
from tfsys.placement.schedule import Device, Link, Links, canonical

SHORT, LONG = 2, 16   # matmuls in the two chains; the slope is one matmul's time
MAX_BANDWIDTH = 1e12  # bytes/s: what a copy too fast to time is taken to move


def _median_secs(fn, budget: float, runs: int = 3, most: int = 50,
                 quantile: float = 0.5) -> float:
  """fn's time: the median of its calls over about `budget` secs (or another quantile of them;
  0: the fastest call)."""
  fn().numpy()   # traces and warms up
  times, t_end = [], time.perf_counter() + budget
  while len(times) < runs or (len(times) < most and time.perf_counter() < t_end):
    t0 = time.perf_counter()
    fn().numpy()
    times.append(time.perf_counter() - t0)
  if quantile == 0.5:
    return statistics.median(times)
  return sorted(times)[int(quantile * (len(times) - 1))]


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
    launch = max((_median_secs(tiny(dev, 256), budget, quantile=0)
                  - _median_secs(tiny(dev, 16), budget, quantile=0)) / 240, 1e-8)
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


def step_timer(config, vocab_size: int, assignment, replicas: int = 1):
  """fn() -> loss: one training step (loss, gradients, update) of config's model placed by
  `assignment` ({part: devices}) on one replica's batch of synthetic ids, in a tf.function: the
  profiling run the cost model is calibrated on."""
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
  model = models.build(config.model, words, placement=DevicePlacement(assignment))
  variables = variables_of(parameters(model))

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss, _, _ = model.loss(batch, model.initial_state(rows), training=True, step=0)
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):   # SGD: the update's cost, not its maths, matters
      if isinstance(g, tf.IndexedSlices):
        v.scatter_sub(tf.IndexedSlices(1e-9 * g.values, g.indices, g.dense_shape))
      else:
        v.assign_sub(1e-9 * g)
    return loss
  return step


def _overlap(fn, budget: float, runs: int = 3, most: int = 30) -> float:
  """How many of fn's calls two logical devices' worth of threads get done in the time of one:
  in turns, one call alone and two at once (each from a thread of its own: TensorFlow releases
  the GIL while a function runs), the median of the rounds' ratios (turns, so that the
  machine's drift falls on both alike)."""
  def together():
    threads = [threading.Thread(target=lambda: fn().numpy()) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    return time.perf_counter() - t0

  def alone():
    t0 = time.perf_counter()
    fn().numpy()
    return time.perf_counter() - t0
  together()   # (warms up)
  ratios, t_end = [], time.perf_counter() + budget
  while len(ratios) < runs or (len(ratios) < most and time.perf_counter() < t_end):
    ratios.append(2 * alone() / together())
  return statistics.median(ratios)


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


# Ops that only run others (their time is their body's ops'): not counted.
_CALLERS = {"While", "StatelessWhile", "If", "StatelessIf", "Case", "StatelessCase",
            "PartitionedCall", "StatefulPartitionedCall"}


def op_secs_by_part(xspace_bytes: bytes, parts) -> dict:
  """{part: secs, "": the rest} of the op executions a TensorFlow profile (an XSpace) records on
  the host: each op's wall time credited to the first part its name's scopes name (on_device's
  `part`, `part_grad`, TensorFlow's uniquified `part_1`; the tape's `gradient_tape/part/...`).
  Events are the executor threads' (`tf_Compute...` lines), named "op name:op type"."""
  # pylint: disable-next=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2   # (TensorFlow's own copy)
  scope = re.compile("(" + "|".join(re.escape(p) for p in parts) + r")(?:_\d+)?(?:_grad)?(?:_\d+)?")
  space = xplane_pb2.XSpace()
  space.ParseFromString(xspace_bytes)
  out = dict.fromkeys(list(parts) + [""], 0.0)
  for plane in space.planes:
    if not plane.name.startswith("/host:"):
      continue
    names = plane.event_metadata
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        name = names[event.metadata_id].name
        op, sep, kind = name.rpartition(":")
        if not sep or "::" in name or kind in _CALLERS:
          continue
        part = next((m.group(1) for m in map(scope.fullmatch, op.split("/")) if m), "")
        out[part] += event.duration_ps * 1e-12
  return out


def profile_parts(fn, parts, calls: int = 2) -> dict:
  """{part: secs per call} of fn's ops (op_secs_by_part) over `calls` calls under TensorFlow's
  profiler; {} if the profiler cannot run (one is already running, say)."""
  import tensorflow as tf   # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="tfsys_profile_") as logdir:
    try:
      tf.profiler.experimental.start(logdir)
    except Exception as e:   # pylint: disable=broad-except
      logging.warning("placement: cannot profile the step's parts (%s); the cost model charges "
                      "every part the step's mean speed", e)
      return {}
    try:
      for _ in range(calls):
        fn().numpy()
    finally:
      tf.profiler.experimental.stop()
    found = [os.path.join(d, f) for d, _, fs in os.walk(logdir) for f in fs
             if f.endswith(".xplane.pb")]
    try:
      with open(found[0], "rb") as f:
        secs = op_secs_by_part(f.read(), parts)
    except Exception as e:   # pylint: disable=broad-except
      logging.warning("placement: cannot read the profile of the step's parts (%s); the cost "
                      "model charges every part the step's mean speed", e or "no profile written")
      return {}
  return {p: t / calls for p, t in secs.items()}


def part_factors(step_graph, device, measured_secs: float, op_secs: dict) -> tuple:
  """((part, factor), ...) for Device.part_scale: the measured step shared among the parts as
  the profile shares their ops' time (what no part's scope holds: the loss's sum, the clipping,
  the update's unplaced ops, spread in proportion), over each part's FLOPs' time at the
  device's matmul speed (its ops' launch cost counted apart)."""
  attributed = sum(t for p, t in op_secs.items() if p)
  if not attributed:
    return ()
  flops, launch = {}, {}
  for n in step_graph.nodes:
    flops[n.part] = flops.get(n.part, 0.0) + n.flops / (device.gflops * 1e9)
    launch[n.part] = launch.get(n.part, 0.0) + n.ops * device.launch_secs
  out = []
  for part, secs in flops.items():
    if op_secs.get(part, 0.0) <= 0.0 or secs <= 0.0:
      continue
    share = measured_secs * op_secs[part] / attributed
    out.append((part, max(share - launch[part], 0.1 * share) / secs))
  return tuple(out)


def calibrate(config, vocab_size: int, devices, replicas: int = 1, seconds: float = 3.0):
  """devices with their speeds scaled so that the cost model predicts the measured step of the
  whole model on one device of each kind, each part's share of it as a profile of that step
  shares it (Device.part_scale), and, for logical CPUs sharing the host's cores, the
  pool's speed taken from two such steps run at once (no more than one device's where the
  process's intra-op threads already use every core).

  A matmul's speed alone overrates a device on a real step (the recurrence's many small ops,
  the element-wise work, the executor's overheads; measured here: the word LM predicted 27%
  under its step on one logical CPU), and how well two logical CPUs overlap depends on the ops
  they run (matmul chains here overlapped 1.0-1.6x from run to run); the step itself is the
  figure that counts. The one-device plan is then the calibration point; every other plan is
  predicted from it. One speed for the whole step is not enough, though: the softmax's large
  matmul runs near the device's peak and the LSTMs' small recurrent ones far below it (issue
  16's bench: every pipelined plan predicted 13-25% slower than it ran, because the parts
  looked less balanced than they were), so each part gets its own factor from a profile of
  the same step (two calls under TensorFlow's profiler, each op's time credited to its part's
  name scope)."""
  import tensorflow as tf   # pylint: disable=import-outside-toplevel
  from tfsys.placement import auto, graph as graph_lib   # pylint: disable=import-outside-toplevel
  step_graph = graph_lib.config_graph(config, vocab_size, replicas=replicas)
  parts = list(step_graph.parts)
  devices = list(devices)
  out, by_kind = list(devices), {}
  for k, d in enumerate(devices):
    by_kind.setdefault(d.kind, []).append(k)
  budget = seconds / (2 * len(by_kind) + 2)   # per timed function, after its trace
  # Logical CPUs share the process's intra-op threads: where one device's ops already use every
  # core, a second device adds no compute (bench/placement.py: with TensorFlow's own threads
  # every split over two logical CPUs ran 6-14% slower than the step on one).
  threads = tf.config.threading.get_intra_op_parallelism_threads() or _cores()
  headroom = max(1, _cores() // threads)
  for kind, members in by_kind.items():
    first = devices[members[0]]
    one = {p: (first.name,) for p in parts}
    timer = step_timer(config, vocab_size, one, replicas)
    # (the lower quartile: a burst of other work on the machine during the second this takes
    # made the calibration point 60% slow once, bench/placement.py; a burst only adds time)
    measured = _median_secs(timer, budget, runs=4, quantile=0.25)
    # (the profile's op times are the host's executor threads': a CPU's compute, but only the
    # launches of a GPU's kernels, so a GPU keeps one speed for the whole step)
    factors = (part_factors(step_graph, first, measured, profile_parts(timer, parts))
               if kind == "CPU" else ())
    for k in members:
      devices[k] = dataclasses.replace(devices[k], part_scale=factors)
    predicted = auto.predict(step_graph, one, devices, check_memory=False).step_secs
    scale = predicted / measured   # < 1: the device is slower on the step than on a matmul
    for k in members:
      # Logical CPUs of one pool are the same cores: the calibrated device's figures for all
      # (their matmul chains differ only by the machine's noise, which would make the placer
      # prefer one of them for nothing).
      like = first if devices[k].pool and devices[k].pool == first.pool else devices[k]
      out[k] = dataclasses.replace(devices[k], gflops=like.gflops * scale,
                                   launch_secs=like.launch_secs / scale,
                                   pool_gflops=devices[k].pool_gflops * scale)
    if kind == "CPU" and len(members) > 1 and first.pool:
      # The pool: two such steps at once (which logical CPU runs them does not matter: they
      # share the same threads), at most `headroom` devices' worth.
      pair = min(_overlap(timer, 2 * budget), 2.0)
      devices_worth = min(pair * len(members) / 2, float(headroom))
      for k in members:
        out[k] = dataclasses.replace(out[k], pool_gflops=out[members[0]].gflops * devices_worth)
  return out
