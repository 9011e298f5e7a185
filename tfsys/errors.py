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

EXIT_BUG = 1
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
