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
