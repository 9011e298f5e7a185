"""Runs every task of a cluster as local processes on 127.0.0.1, as a multi-host job would, and
supervises them.

Each task gets its own TF_CONFIG (free ports picked here), its output prefixed with its name on
the console and saved to LOG_DIR/<task>.log. A task that dies is restarted alone where the
backend survives its death, else the whole cluster is restarted and resumes from the last
checkpoint, up to `restarts` times in all (RestartPolicy); then the failing task's status is
returned. On SIGTERM every task is asked to save and stop; on Ctrl-C every child is killed and
reaped.
"""
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tfsys.errors import (EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PREEMPTED, StorageError, UserError,
                          WorkdirBusyError)


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


# Exit statuses after which relaunching cannot help: the input is wrong (2), the run diverged
# (5), another trainer holds the workdir (6), the disk is full or read-only (4). Anything else
# (a signal, a lost peer (3), preemption (75), an unexpected error (1)) may be transient.
FINAL_STATUSES = (StorageError.exit_status, UserError.exit_status, EXIT_DIVERGED,
                  WorkdirBusyError.exit_status)


def describe_status(code: int) -> str:
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exited with status {code}"


def shell_status(code: int) -> int:
  """A child's status as a shell reports it: 128 + n for death by signal n."""
  return 128 - code if code < 0 else code


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
  """Which deaths the backend survives (the README's table for orchestrators).

  sync_backup: a worker that dies is restarted alone and rejoins at the global step; with
  b >= 1 the chief does not even wait for it, with b = 0 it waits until it is back. Any other
  task (ps, chief) of any backend, and every task of multi_worker (a collective cannot lose a
  member) and async_ps (as the issue asks; its workers could rejoin alone too), restarts the
  whole cluster, which resumes from the chief's last checkpoint.
  """
  backend: str = ""
  backups: int = 0

  def alone(self, name: str) -> bool:
    return self.backend == "sync_backup" and name.startswith("worker")


def policy_of(command: list[str]) -> RestartPolicy:
  """The backend (and b) of a scripts/train.py command, from its --config file and overrides,
  read the way train.py reads them. Another command: the whole cluster restarts."""
  if not any(a.startswith("--config=") for a in command):
    return RestartPolicy()
  from absl import flags   # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags   # pylint: disable=import-outside-toplevel
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=False)
  try:
    values(["train.py"] + [a for a in command if a.startswith("--config=")])
    d = values.config.distribute
    # The overrides that decide the policy (absl registers override flags on the global
    # FLAGS only, so these few are read here).
    got = {"backend": d.backend, "replicas_to_aggregate": d.replicas_to_aggregate,
           "total_num_replicas": d.total_num_replicas}
    for a in command:
      key, _, value = a.removeprefix("--config.distribute.").partition("=")
      if a.startswith("--config.distribute.") and key in got:
        got[key] = type(got[key])(value)
  except Exception:   # noqa: BLE001  the task itself will say what is wrong with its flags
    return RestartPolicy()
  backend = got["backend"]
  backups = got["total_num_replicas"] - got["replicas_to_aggregate"]
  return RestartPolicy(backend, max(backups, 0) if backend == "sync_backup" else 0)


def respec(spec: dict) -> dict:
  """The same jobs and task counts on fresh ports."""
  sizes = [(job, len(addrs)) for job, addrs in spec.items()]
  ports = iter(free_ports(sum(n for _, n in sizes)))
  return {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in sizes}


class LocalCluster:
  """Starts, watches and restarts the tasks of one cluster on this machine.

  `restarts`: how many deaths are recovered in all, each by restarting the task alone where
  the backend survives its death (RestartPolicy) or else the whole cluster; 0 stops every task
  at the first failure. Every death and restart is written to LOG_DIR/launcher.jsonl.
  """

  def __init__(self, command: list[str], spec: dict, log_dir: str, restarts: int = 0,
               policy: RestartPolicy | None = None, grace_secs: float = 30.0):
    if not command:
      raise UserError("nothing to launch: give the command after --, e.g. "
                      "-- scripts/train.py --config=... --workdir=...")
    if restarts < 0:
      raise UserError(f"--restarts must be >= 0, got {restarts}")
    if command[0].endswith(".py"):
      command = [sys.executable] + command
    self.command, self.spec, self.log_dir = command, spec, log_dir
    self.restarts, self.policy = restarts, policy or policy_of(command)
    self.grace_secs = grace_secs
    self.procs: dict[str, subprocess.Popen] = {}
    self._threads = []
    self._print_lock = threading.Lock()
    self._events = None
    self.restarted = 0

  def _start(self, job: str, index: int) -> None:
    name = f"{job}{index}"
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": self.spec, "task": {"type": job, "index": index}}))
    proc = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True,   # own process group: killed as a whole
                            preexec_fn=_die_with_parent)
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
    self._event("started", name, pid=proc.pid)

  def _start_all(self) -> None:
    for job in ("ps", "chief", "worker"):
      for i in range(len(self.spec.get(job, []))):
        self._start(job, i)

  def stop(self, sig: int = signal.SIGKILL, wait_secs: float = 0.0) -> None:
    """Stops every live task and reaps them all.

    SIGKILL at once by default: nothing is lost, a task is always resumable from its last
    checkpoint, which is written atomically. With SIGTERM (preemption) the chief and the
    workers get it first and up to wait_secs to save and exit; the ps tasks, which hold the
    state the chief saves, are SIGKILLed only after that.
    """
    if sig != signal.SIGKILL:
      clients = [p for n, p in self.procs.items() if not n.startswith("ps")]
      for p in clients:
        if p.poll() is None:
          _signal_group(p, sig)
      deadline = time.monotonic() + wait_secs
      for p in clients:
        try:
          p.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
          pass
    for p in self.procs.values():
      if p.poll() is None:
        _signal_group(p, signal.SIGKILL)
    for p in self.procs.values():
      p.wait()
    for t in self._threads:
      t.join(timeout=2.0)
    self._threads = [t for t in self._threads if t.is_alive()]

  def _chief(self) -> str:
    return "chief0" if "chief" in self.spec else "worker0"

  def _watch(self) -> tuple[str, str | None, int]:
    """Waits until the run ends ("done"), or a task dies ("died", its name, its status)."""
    chief_done_at = None
    while True:
      codes = {n: p.poll() for n, p in self.procs.items()}
      failed = [(n, c) for n, c in codes.items() if c not in (None, 0)]
      if failed and chief_done_at is None:
        # The task that died first (the others may be failing because of it): the chief's
        # death or a ps's explains the workers', so those are named first.
        order = {"ps": 0, "chief": 1, "worker": 2}
        name, code = min(failed, key=lambda f: (order.get(f[0].rstrip("0123456789"), 3), f[0]))
        return "died", name, code
      if all(codes[n] == 0 for n in codes if not n.startswith("ps")):
        return "done", None, 0
      if codes.get(self._chief()) == 0:
        # The chief finished and wrote the results: workers still up get grace_secs to see
        # the end (one killed meanwhile changes nothing).
        chief_done_at = chief_done_at or time.monotonic()
        if time.monotonic() - chief_done_at > self.grace_secs:
          self._say(f"the chief finished; stopping the workers still running after "
                    f"{self.grace_secs:.0f} s")
          return "done", None, 0
      time.sleep(0.1)

  def run(self) -> int:
    """Starts every task and supervises them; returns 0 if the run finished, else the status
    of the task whose failure ended it (128 + n for a signal n), 130 on Ctrl-C, or 75 if the
    launcher was preempted (SIGTERM) and its chief saved."""
    os.makedirs(self.log_dir, exist_ok=True)
    self._events = open(os.path.join(self.log_dir, "launcher.jsonl"), "a", encoding="utf-8")
    terminated = []

    def on_sigterm(signum, frame):
      del frame
      terminated.append(signum)
      raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
      self._start_all()
      while True:
        outcome, name, code = self._watch()
        if outcome == "done":
          self._event("finished", None)
          return 0
        self._event("died", name, status=code)
        final = code in FINAL_STATUSES
        # A preempted task's peers are saving the same step (multi_worker saves together; a
        # sync chief stops its workers): they get SIGTERM and time to finish, not SIGKILL.
        stop_sig = signal.SIGTERM if code == EXIT_PREEMPTED else signal.SIGKILL
        if final or self.restarted >= self.restarts:
          why = ("relaunching cannot help" if final else
                 f"no restarts left (--restarts={self.restarts})" if self.restarts else
                 "--restarts=0")
          self._say(f"{name} {describe_status(code)}; {why}: stopping the other tasks")
          self.stop(stop_sig, wait_secs=self.grace_secs)
          return shell_status(code)
        self.restarted += 1
        count = f"restart {self.restarted} of {self.restarts}"
        if self.policy.alone(name):
          self._say(f"{name} {describe_status(code)}; {self.policy.backend} goes on without it "
                    f"(b={self.policy.backups}): restarting {name} alone ({count})")
          self._threads = [t for t in self._threads if t.is_alive()]
          self._start(*_split_name(name))
          self._event("restarted", name, alone=True)
        else:
          self._say(f"{name} {describe_status(code)}; restarting the whole cluster, which "
                    f"resumes from the last checkpoint ({count})")
          self.stop(stop_sig, wait_secs=self.grace_secs)
          self.procs.clear()
          # New ports: the dead cluster's may still be held by its connections' TIME_WAIT.
          self.spec = respec(self.spec)
          self._start_all()
          self._event("restarted", None, alone=False)
    except KeyboardInterrupt:
      if terminated:
        # Preempted: every task gets SIGTERM and time to save the step under way.
        self._say("SIGTERM: asking every task to save and stop")
        self._event("preempted", None)
        self.stop(signal.SIGTERM, wait_secs=self.grace_secs)
        chief = self.procs.get(self._chief())
        return EXIT_PREEMPTED if chief is not None and chief.returncode == EXIT_PREEMPTED else (
            shell_status(chief.returncode) if chief is not None and chief.returncode else
            EXIT_PREEMPTED)
      self._say("interrupted: stopping every task")
      return EXIT_INTERRUPTED
    finally:
      # A second SIGTERM or Ctrl-C (a `timeout` wrapper forwards one more) must not cut the
      # clean-up short and leave tasks running.
      ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
      try:
        self.stop()
        self._events.close()
      finally:
        signal.signal(signal.SIGINT, ignored[signal.SIGINT])
        signal.signal(signal.SIGTERM, previous)

  def _event(self, event: str, task: str | None, **fields) -> None:
    if self._events is not None:
      self._events.write(json.dumps({"time": time.time(), "event": event, "task": task,
                                     **fields}) + "\n")
      self._events.flush()

  def _say(self, message: str) -> None:
    with self._print_lock:
      print(f"[launcher] {message}", flush=True)


try:   # loaded here, not in the forked child (preexec_fn runs between fork and exec)
  _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
  _PRCTL = None   # not Linux


def _die_with_parent() -> None:
  """In a task, before exec: Linux SIGKILLs it when the launcher dies, even by SIGKILL, so that
  no task outlives its supervisor (a new launcher's tasks would meet it on the ps)."""
  if _PRCTL is not None:
    _PRCTL(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1


def _split_name(name: str) -> tuple[str, int]:
  job = name.rstrip("0123456789")
  return job, int(name[len(job):])


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass
