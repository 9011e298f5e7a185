"""Errors reported as one line, each kind with its own exit status.

A launcher or an orchestrator (Kubernetes restart policies, a shell loop) decides from the exit
status alone what to do next; the line on stderr says why to a person. Scripts catch these at
the top level (`tfsys.cli.run`) and exit with `exit_status`, without a traceback.

  status  class               meaning                                         relaunching
  1       (any other error)   a bug: the traceback goes to a log file         may fail again
  2       UserError           bad input: a flag, file, corpus line, TF_CONFIG  fails again
  3       TaskLostError       a task of the cluster died or cannot be reached  resumes
  4       StorageError        disk full, read-only or unwritable directory     after freeing space
  5       DivergedError       loss NaN or diverged (tfsys/train/run.py)        fails again
  6       WorkdirBusyError    another live trainer holds the workdir           after it ends
  75      PreemptedError      SIGTERM: saved at the step under way, exited     resumes exactly
  130     Ctrl-C              saved at the step under way                      resumes exactly
"""

import errno
import os
import shutil
import sys

EXIT_BUG = 1
EXIT_DIVERGED = 5
EXIT_PREEMPTED = 75   # EX_TEMPFAIL (sysexits.h): "try again later"
EXIT_INTERRUPTED = 130


class UserError(Exception):
  """A problem with the user's input, reported as one line without a traceback."""
  exit_status = 2


class TaskLostError(UserError):
  """A ps task, the chief or an all-reduce peer is gone; the run resumes from its last
  checkpoint when the cluster is relaunched."""
  exit_status = 3


class StorageError(UserError):
  """A write failed for lack of space or permission; the last checkpoint is intact."""
  exit_status = 4


class WorkdirBusyError(UserError):
  """Another live trainer holds the workdir (tfsys/train/workdir.py: WorkdirLock)."""
  exit_status = 6


class PreemptedError(UserError):
  """SIGTERM: the run saved the step under way and stopped; the same command resumes there."""
  exit_status = EXIT_PREEMPTED


# How TensorFlow's file system layer words the OS errors of a failed write (its OpErrors carry
# the strerror text, not the errno).
_TF_STORAGE_MESSAGES = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                        "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


def storage_errno(e: BaseException) -> int | None:
  """The errno of a failed write for lack of space or permission (an OSError, or TensorFlow's
  error for one), else None."""
  if isinstance(e, OSError):
    return e.errno if e.errno in _STORAGE_REASONS else None
  text = str(e)
  return next((n for m, n in _TF_STORAGE_MESSAGES.items() if m in text), None)


_STORAGE_REASONS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                    errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                    errno.EPERM: "permission denied"}


def storage_error(path: str, e: BaseException, needed_bytes: int = 0, intact: str = "") -> Exception:
  """The one line for a failed write: which path, why, how much it needed and what is intact.
  Errors that are not about space or permission are returned unchanged (they are bugs)."""
  code = storage_errno(e)
  if code is None:
    return e
  need = f"; it needed about {needed_bytes / 2**20:.1f} MB" if needed_bytes else ""
  try:
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    have = f", {free / 2**20:.1f} MB free there"
  except OSError:
    have = ""
  return StorageError(f"cannot write {path}: {_STORAGE_REASONS[code]}{need}{have}"
                      + (f". {intact}" if intact else ""))


def exit_now(message: str, status: int) -> None:
  """Prints the one line and ends the process at once, skipping clean-up: for a task whose
  other threads may be blocked in a remote call (a ps, a collective) that would hold a normal
  exit."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  workdir = sys.modules.get("tfsys.train.workdir")
  if workdir is not None:
    workdir.release_all()   # the workdir's hold, which os._exit would leave to go stale
  os._exit(status)  # pylint: disable=protected-access


def error_summary(e: BaseException, limit: int = 160) -> str:
  """The line of an exception's message that says what happened. TensorFlow's graph errors
  start with "Graph execution error:" and the op's stack; the cause is a later line."""
  text = (getattr(e, "message", None) or str(e)).strip()
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  noise = ("Graph execution error", "Detected at node", "File ", "Traceback", "[[{{", "Compiled")
  useful = [l for l in lines if not l.startswith(noise) and not l.startswith(("in ", "line "))]
  line = useful[0] if useful else (lines[0] if lines else type(e).__name__)
  for marker in (" [Op:", "\tCompiled", " [[{{"):
    line = line.split(marker)[0]
  return line[:limit]
