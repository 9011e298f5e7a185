"""The cluster a process belongs to, read from the standard `TF_CONFIG` and checked.

    TF_CONFIG={"cluster": {"worker": ["host1:2222", "host2:2222"]},
               "task": {"type": "worker", "index": 0}}

Jobs: `chief` (optional; else worker 0 is the chief), `worker`, and `ps` for the
parameter-server backends. The chief alone writes summaries, checkpoints and the config.
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

from tfsys.errors import UserError

JOBS = ("chief", "worker", "ps", "evaluator")


@dataclasses.dataclass(frozen=True)
class Cluster:
  jobs: dict            # job name -> list of "host:port"
  task_type: str
  task_index: int

  @property
  def is_chief(self) -> bool:
    if "chief" in self.jobs:
      return self.task_type == "chief"
    return self.task_type == "worker" and self.task_index == 0

  @property
  def address(self) -> str:
    return self.jobs[self.task_type][self.task_index]

  @property
  def name(self) -> str:
    return f"{self.task_type}{self.task_index}"

  def peers(self) -> list[tuple[str, str]]:
    """(task name, address) of every other task."""
    return [(f"{job}{i}", addr) for job, addrs in self.jobs.items() for i, addr in enumerate(addrs)
            if (job, i) != (self.task_type, self.task_index)]


def _split(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise UserError(f"TF_CONFIG address {address!r} is not host:port")
  return host, int(port)


def parse(raw: str | None) -> Cluster | None:
  """The cluster described by a TF_CONFIG string, or None when it is unset or empty."""
  if raw is None or not raw.strip():
    return None
  try:
    spec = json.loads(raw)
  except json.JSONDecodeError as e:
    raise UserError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos})") from None
  if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict):
    raise UserError('TF_CONFIG needs a "cluster" object mapping job names to address lists')
  task = spec.get("task")
  if not isinstance(task, dict) or "type" not in task or "index" not in task:
    raise UserError('TF_CONFIG needs a "task" object with "type" and "index"')
  jobs = spec["cluster"]
  seen = {}
  for job, addrs in jobs.items():
    if job not in JOBS:
      raise UserError(f"TF_CONFIG job {job!r} is not one of {', '.join(JOBS)}")
    if not isinstance(addrs, list) or not addrs:
      raise UserError(f"TF_CONFIG job {job!r} must list at least one address")
    for i, addr in enumerate(addrs):
      _split(addr)
      if addr in seen:
        raise UserError(f"TF_CONFIG gives address {addr} to both {seen[addr]} and {job}{i}")
      seen[addr] = f"{job}{i}"
  task_type, index = task["type"], task["index"]
  if task_type not in jobs:
    raise UserError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster "
                    f"(jobs: {', '.join(jobs)})")
  if not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
    raise UserError(f"TF_CONFIG task index {index!r} is out of range: job {task_type!r} has "
                    f"{len(jobs[task_type])} task(s)")
  return Cluster(jobs={k: list(v) for k, v in jobs.items()}, task_type=task_type, task_index=index)


def from_env() -> Cluster | None:
  return parse(os.environ.get("TF_CONFIG"))


def check_port_free(address: str) -> None:
  """Fails clearly if this task's own port is taken (TensorFlow would fail obscurely)."""
  _, port = _split(address)
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    # As gRPC binds: a port left in TIME_WAIT by a killed predecessor is reusable at once.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind(("", port))
    except OSError:
      raise UserError(f"port {port} of this task's TF_CONFIG address {address} is already in "
                      "use: stop the process holding it or choose another port") from None


def unreachable_peers(cluster: Cluster) -> list[tuple[str, str]]:
  """(name, address) of the other tasks whose servers do not accept a connection now."""
  missing = []
  for name, addr in cluster.peers():
    host, port = _split(addr)
    try:
      with socket.create_connection((host, port), timeout=1.0):
        pass
    except OSError:
      missing.append((name, addr))
  return missing


def reachable(address: str, timeout: float = 1.0) -> bool:
  host, port = _split(address)
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def wait_for(tasks: list[tuple[str, str]], timeout_secs: float, me: str) -> None:
  """Waits until every (name, address) accepts connections, or fails naming those that do not."""
  deadline = time.monotonic() + timeout_secs
  pending = list(tasks)
  while pending:
    pending = [(n, a) for n, a in pending if not reachable(a)]
    if pending and time.monotonic() > deadline:
      names = ", ".join(f"{n} ({a})" for n, a in pending)
      raise UserError(f"[{me}] {names} did not come up within {timeout_secs:g} s "
                      "(--config.distribute.startup_timeout_secs); is every task started?")
    if pending:
      time.sleep(0.2)


_WATCHDOG = r"""
import os, signal, socket, sys, time
parent, deadline, me = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), sys.argv[3]
peers = [a.split("=", 1) for a in sys.argv[4:]]
while time.monotonic() < deadline:
    time.sleep(0.5)
    try:
        os.kill(parent, 0)
    except OSError:
        sys.exit(0)                       # the task ended on its own
missing = []
for name, addr in peers:
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        missing.append(f"{name} ({addr})")
print(f"error: [{me}] {', '.join(missing) or 'a task'} did not come up within {sys.argv[2]} s "
      "(--config.distribute.startup_timeout_secs); is every task started?", file=sys.stderr, flush=True)
os.kill(parent, signal.SIGKILL)   # TensorFlow handles SIGTERM and would keep waiting
"""


class StartupWatchdog:
  """Ends this task with a message naming the missing peers if the cluster is not up in time.

  TensorFlow's MultiWorkerMirroredStrategy waits, inside C++ that holds the GIL and with no
  deadline of its own, until every task has joined; no Python thread or signal handler runs
  meanwhile, so the watchdog is a separate process, disarmed once the strategy exists.
  """

  def __init__(self, cluster: Cluster, timeout_secs: float):
    peers = [f"{name}={addr}" for name, addr in cluster.peers()]
    self._proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                   f"{timeout_secs:g}", cluster.name, *peers])

  def disarm(self) -> None:
    self._proc.kill()
    self._proc.wait()
