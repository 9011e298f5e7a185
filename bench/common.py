"""Helpers the benchmarks share."""
import time


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
