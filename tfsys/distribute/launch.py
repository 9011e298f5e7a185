"""Runs every task of a cluster as local processes on 127.0.0.1, as a multi-host job would.

Each task gets its own TF_CONFIG (free ports picked here), its output prefixed with its name on
the console and saved to LOG_DIR/<task>.log. If one task fails, the others are stopped and its
exit status is returned; on Ctrl-C or SIGTERM every child is killed and reaped.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tfsys.errors import UserError


def free_ports(n: int) -> list[int]:
  """n distinct ports free on 127.0.0.1 (held open together so none is picked twice)."""
  socks = []
  try:
    for _ in range(n):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(("127.0.0.1", 0))
      socks.append(s)
    return [s.getsockname()[1] for s in socks]
  finally:
    for s in socks:
      s.close()


def cluster_spec(num_workers: int, num_ps: int = 0) -> dict:
  """Workers only (worker 0 is the chief), or with ps tasks also a chief task of its own: the
  parameter-server backends' chief applies updates and computes no gradients."""
  ports = free_ports(num_workers + num_ps + (1 if num_ps else 0))
  spec = {"worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]]}
  if num_ps:
    spec["ps"] = [f"127.0.0.1:{p}" for p in ports[num_workers:num_workers + num_ps]]
    spec["chief"] = [f"127.0.0.1:{ports[-1]}"]
  return spec


class LocalCluster:

  def __init__(self, command: list[str], spec: dict, log_dir: str):
    if not command:
      raise UserError("nothing to launch: give the command after --, e.g. "
                      "-- scripts/train.py --config=... --workdir=...")
    if command[0].endswith(".py"):
      command = [sys.executable] + command
    self.command, self.spec, self.log_dir = command, spec, log_dir
    self.procs: dict[str, subprocess.Popen] = {}
    self._threads = []
    self._print_lock = threading.Lock()

  def _start(self, job: str, index: int) -> None:
    name = f"{job}{index}"
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": self.spec, "task": {"type": job, "index": index}}))
    proc = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)   # own process group: killed as a whole
    self.procs[name] = proc
    log = open(os.path.join(self.log_dir, f"{name}.log"), "a", encoding="utf-8")

    def pump():
      with log:
        for line in proc.stdout:
          log.write(line)
          log.flush()
          with self._print_lock:
            sys.stdout.write(f"[{name}] {line}")
            sys.stdout.flush()
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    self._threads.append(t)

  def stop(self) -> None:
    """SIGKILLs every live task's process group and reaps them all.

    Not SIGTERM: TensorFlow installs its own SIGTERM handler and a task keeps running. Nothing
    is lost: a task is always resumable from its last checkpoint, which is written atomically.
    """
    for p in self.procs.values():
      if p.poll() is None:
        _signal_group(p, signal.SIGKILL)
    for p in self.procs.values():
      p.wait()
    for t in self._threads:
      t.join(timeout=2.0)

  def run(self) -> int:
    """Starts every task and waits; returns 0 if all succeed, else the first failure's status."""
    os.makedirs(self.log_dir, exist_ok=True)

    def on_signal(signum, frame):
      raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
      for job in ("ps", "chief", "worker"):
        for i in range(len(self.spec.get(job, []))):
          self._start(job, i)
      while True:
        codes = {n: p.poll() for n, p in self.procs.items()}
        failed = [(n, c) for n, c in codes.items() if c not in (None, 0)]
        if failed:
          name, code = failed[0]
          self._say(f"{name} exited with status {code}; stopping the other tasks")
          return code
        workers_done = all(codes[n] == 0 for n in codes if not n.startswith("ps"))
        if workers_done:
          return 0
        time.sleep(0.2)
    except KeyboardInterrupt:
      self._say("interrupted: stopping every task")
      return 130
    finally:
      # A second SIGTERM or Ctrl-C (a `timeout` wrapper forwards one more) must not cut the
      # clean-up short and leave tasks running.
      ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
      try:
        self.stop()
      finally:
        signal.signal(signal.SIGINT, ignored[signal.SIGINT])
        signal.signal(signal.SIGTERM, previous)

  def _say(self, message: str) -> None:
    with self._print_lock:
      print(f"[launcher] {message}", flush=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass
