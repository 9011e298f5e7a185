"""The run directory: held by one trainer, checked writable, holds config.json, refuses an
incompatible resume, and is cleared of what an interrupted write left behind."""
import atexit
import datetime
import fcntl
import glob
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time

import ml_collections
from absl import logging

from tfsys.errors import StorageError, UserError, WorkdirBusyError, storage_errno, storage_error

CONFIG_FILE = "config.json"
# What a checkpoint's variables, optimizer slots and data position depend on. Anything else
# (number of steps, logging, evaluation, learning rate) may change between runs of a workdir.
# train.precision and train.jit_compile too: a run's numerics and random draws (XLA draws its
# own dropout masks from the same seeds) do not change half-way.
RESUME_KEYS = ("seed", "data", "model", "train.batch_size", "train.unroll", "optim.name",
               "train.precision", "train.jit_compile")
# What configs saved before a resume key existed ran with.
RESUME_DEFAULTS = {"train.precision": "float32", "train.jit_compile": False}


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def _resume_relevant(flat: dict) -> dict:
  return {k: v for k, v in flat.items()
          if any(k == r or k.startswith(r + ".") for r in RESUME_KEYS)}


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (for evaluate.py, sample.py, export)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: is {workdir} a tfsys workdir? Train with "
                    f"scripts/train.py --workdir={workdir} first")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    if storage_errno(e) is not None:
      raise StorageError(f"workdir {workdir} is not writable: {e.strerror}") from None
    raise UserError(f"workdir {workdir} is not writable: {e.strerror}") from None


def prepare(config: ml_collections.ConfigDict, workdir: str, write: bool = True) -> bool:
  """Creates or checks the workdir and writes config.json; returns True if resuming.

  With write=False (a worker that is not the chief) it only creates the directory.
  """
  _check_writable(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  new = config_to_dict(config)
  resuming = os.path.isfile(path)
  if not write:
    return resuming
  if resuming:
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    before = _resume_relevant({**RESUME_DEFAULTS, **_flatten(old)})
    after = _resume_relevant({**RESUME_DEFAULTS, **_flatten(new)})
    diffs = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
             for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if diffs:
      raise UserError(f"workdir {workdir} holds a run with an incompatible config ("
                      + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
                      + "); use a new --workdir or the original settings")
  write_json_atomically(path, new, indent=2, sort_keys=True)
  return resuming


def write_json_atomically(path: str, obj, **dump_args) -> None:
  """path holds either its old content or all of `obj`, never a part: written to path.tmp and
  renamed. A full disk or a read-only directory is a StorageError naming the path; the
  temporary file is removed then (and at the next start if the process was killed)."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, **dump_args)
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise storage_error(path, e) from None


# ==================================================================== leftovers
def remove_leftovers(workdir: str) -> list[str]:
  """Removes what a write interrupted by a kill or a full disk leaves: TensorFlow's
  `checkpoints/ckpt-N_temp/` directories (a save renames its files out of them only when
  complete, and lists ckpt-N in the `checkpoint` index only after that), `*.tmp` files of our
  atomic JSON(L) writes. Call only while holding the workdir (WorkdirLock):
  another live trainer's temporaries would look the same. Returns what was removed."""
  # (Not .write_test* probes: a worker may be making its own right now, and it removes it.)
  patterns = ["checkpoints/*_temp", "checkpoints/checkpoint.tmp*", "*.json.tmp", "*.jsonl.tmp"]
  removed = []
  for pattern in patterns:
    for path in sorted(glob.glob(os.path.join(workdir, pattern))):
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      else:
        try:
          os.remove(path)
        except OSError:
          continue
      removed.append(os.path.relpath(path, workdir))
  if removed:
    logging.info("removed what an interrupted write left in %s: %s", workdir, ", ".join(removed))
  return removed


# ==================================================================== one run per workdir
LOCK_FILE = "lock.json"


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return ""


def _process_start(pid: int) -> str:
  """The kernel's start time of a process (clock ticks since boot): a pid reused by another
  process has another start time. '' where /proc does not say."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return ""


def _command_line() -> str:
  """This process's command line as typed (with `-c` code too), the interpreter's path shortened."""
  try:
    with open("/proc/self/cmdline", "rb") as f:
      argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
  except OSError:
    argv = [sys.executable] + sys.argv
  argv[0] = os.path.basename(argv[0])
  return shlex.join(argv)[:1000]


def _alive_here(holder: dict) -> bool:
  """Whether the holder's process is still running (the holder ran on this host and boot)."""
  pid = int(holder.get("pid", 0))
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass   # alive, another user's
  started = holder.get("process_start", "")
  return not started or _process_start(pid) in ("", started)


class WorkdirLock:
  """One trainer per workdir, for the trainer's whole life (the chief alone, in a cluster).

  WORKDIR/lock.json names the holder: host, pid, start time, command. The holder keeps an
  exclusive `flock` on it and touches its mtime every `heartbeat_secs` from a thread.

  A hold is recognised as stale (its holder died by kill -9 or a power loss) by whichever of
  these applies:
  - the kernel: a dead process's flock is released at once, so a second trainer's flock
    succeeds. On NFSv4 and most cluster file systems flock is a lease the server drops when
    the client stops renewing it.
  - the same host and boot (`/proc/sys/kernel/random/boot_id`): the holder's pid is not
    running, or runs another process (its kernel start time differs). Checked even when flock
    succeeded, for file systems where flock is local to each host or a no-op.
  - another host: the heartbeat (the file's mtime, set by the storage server's clock for
    NFS) is older than `stale_secs`. A holder that lives keeps it fresh; one on a host that
    lost power stops. Clocks of client and storage must agree to within stale_secs.
  A stale hold is taken over with one log line naming the dead holder.
  """

  def __init__(self, workdir: str, heartbeat_secs: float = 10.0, stale_secs: float = 60.0):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.heartbeat_secs, self.stale_secs = heartbeat_secs, stale_secs
    self._fd = None
    self._stop = threading.Event()
    self._thread = None
    self.me = {"host": socket.gethostname(), "pid": os.getpid(), "boot_id": _boot_id(),
               "process_start": _process_start(os.getpid()),
               "started": datetime.datetime.now(datetime.timezone.utc).strftime(
                   "%Y-%m-%d %H:%M:%S UTC"),
               "command": _command_line()}

  def _describe(self, holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
            f"command: {holder.get('command')}")

  def _busy(self, holder: dict, why: str = "") -> WorkdirBusyError:
    return WorkdirBusyError(
        f"workdir {os.path.dirname(self.path)} is held by another trainer ({self._describe(holder)})"
        f"{why}; wait for it to end or stop it, or use another --workdir")

  def _read(self, fd) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
      return json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
      return {}   # a holder killed while writing it: no live holder writes a partial file

  def acquire(self) -> "WorkdirLock":
    earlier = _HELD.pop(os.path.realpath(self.path), None)
    if earlier is not None:   # this process's earlier run of the workdir ended by an exception
      earlier.release()
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise storage_error(self.path, e) from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = self._read(fd)
        deadline = time.monotonic() + 2.0
        while not holder and time.monotonic() < deadline:   # it is writing its record now
          time.sleep(0.05)
          holder = self._read(fd)
        os.close(fd)
        raise self._busy(holder) from None
      except OSError:
        pass   # a file system without flock: the checks below decide alone
      try:
        same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same_file = False
      if not same_file:   # the holder removed it as we opened it: try the new one
        os.close(fd)
        continue
      holder = self._read(fd)
      mine = all(holder.get(k) == self.me[k] for k in ("host", "boot_id", "pid", "process_start"))
      if holder and not mine:   # (this very process's earlier hold is its own to take)
        self._check_stale(fd, holder)
      self._fd = fd
      break
    data = json.dumps(self.me, indent=2).encode("utf-8")
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, data, 0)
      os.fsync(self._fd)
    except OSError as e:
      self.release()
      raise storage_error(self.path, e) from None
    # The thread touches its own copy of the descriptor: release() may close ours meanwhile.
    self._thread = threading.Thread(target=self._heartbeat, args=(os.dup(self._fd),),
                                    daemon=True, name="workdir-lock")
    self._thread.start()
    _HELD[os.path.realpath(self.path)] = self
    atexit.register(self.release)
    return self

  def _check_stale(self, fd, holder: dict) -> None:
    """Raises WorkdirBusyError unless the hold recorded in the file is stale."""
    if holder.get("host") == self.me["host"] and holder.get("boot_id") == self.me["boot_id"]:
      if _alive_here(holder):
        os.close(fd)
        raise self._busy(holder)
      why = "its process is gone"
    else:
      age = time.time() - os.fstat(fd).st_mtime
      if age < self.stale_secs:
        os.close(fd)
        raise self._busy(holder, f"; its heartbeat is {age:.0f} s old (a hold is stale after "
                                 f"{self.stale_secs:.0f} s without one)")
      why = f"no heartbeat for {age:.0f} s"
    logging.warning("taking over %s from a trainer that died (%s): %s", self.path, why,
                    self._describe(holder))

  def _heartbeat(self, fd: int) -> None:
    try:
      while not self._stop.wait(self.heartbeat_secs):
        try:
          os.utime(fd)
        except OSError:
          pass   # a full or failing disk: the run itself will say so
    finally:
      os.close(fd)

  def release(self) -> None:
    """Removes the hold (at the end of the run; a killed holder's hold is recognised stale)."""
    if self._fd is None:
      return
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=5.0)
    try:
      if self._read(self._fd).get("pid") == os.getpid():
        os.remove(self.path)   # while still holding the flock: see the inode check in acquire
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None
    _HELD.pop(os.path.realpath(self.path), None)


_HELD: dict[str, WorkdirLock] = {}   # the holds of this process, by lock file


def release_all() -> None:
  """Releases this process's holds: for an exit that skips atexit (tfsys.errors.exit_now), so
  that a relaunched chief, maybe on another host, need not wait for the heartbeat to go stale."""
  for lock in list(_HELD.values()):
    lock.release()


def hold(workdir: str) -> WorkdirLock:
  """Takes the workdir for this trainer (creating it) and clears an interrupted write's
  leftovers: call before anything is written there."""
  _check_writable(workdir)
  lock = WorkdirLock(workdir).acquire()
  remove_leftovers(workdir)
  return lock
