"""What every script shares: quiet TensorFlow start-up, and every failure as one line with an
exit status that says what kind it is (tfsys/errors.py). Tracebacks go to a log file, or to the
console with --verbose."""
import datetime
import logging as std_logging
import os
import re
import sys
import tempfile
import traceback

# Before TensorFlow is imported: hide its C++ start-up chatter where it can be hidden. (The
# "Could not find cuda drivers" lines on CPU machines are printed before TensorFlow reads this.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from tfsys.errors import (EXIT_BUG, EXIT_INTERRUPTED, EXIT_PREEMPTED, StorageError, UserError,  # noqa: E402
                          error_summary, storage_errno, storage_error)

_VERBOSE = flags.DEFINE_bool("verbose", False, "print the traceback of an unexpected error "
                             "(otherwise it goes to a log file named in the error line)")


def _fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _crash_log() -> str:
  """Writes the current exception's traceback to WORKDIR/logs (or the temp directory);
  returns the file's path, or '' if it could not be written."""
  workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  name = f"crash-{os.path.basename(sys.argv[0]).removesuffix('.py')}-{stamp}-{os.getpid()}.log"
  for folder in ([os.path.join(workdir, "logs")] if workdir else []) + [tempfile.gettempdir()]:
    try:
      os.makedirs(folder, exist_ok=True)
      path = os.path.join(folder, name)
      with open(path, "w", encoding="utf-8") as f:
        f.write(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
      return path
    except OSError:
      continue
  return ""


def _path_in(message: str) -> str | None:
  """The file a TensorFlow write error names: '... {{function_node ...}} PATH; No space ...'."""
  found = re.search(r"(?:^|[}\s])(/[^;\s]+); ", message)
  return found.group(1) if found else None


def _first_line(e: BaseException) -> str:
  return error_summary(e, 400)


def _parse_flags(argv):
  """absl's flag parsing, with config-file problems (a misspelled --config.key, an unknown
  variant, a missing file) reported as one line instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):
      value = flags.FLAGS[name].value
      if type(value).__name__ == "_ErrorConfig":
        value._ReportError()  # ml_collections defers a config file's load error: raise it here
    return rest
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):
      # ml_collections puts the config file's traceback in the message: keep its first and
      # last lines (where it failed and why).
      lines = [lines[0].rstrip(":"), lines[-1].strip()]
    _fail(": ".join(lines))
  except (KeyError, AttributeError) as e:
    # ml_collections: KeyError("'lstm_unit'\nDid you mean \"lstm_units\" ...") for a locked config.
    text = str(e.args[0] if e.args else e).replace("\\n", "\n").replace("\\'", "'")
    text = ". ".join(line.strip("'\" ") for line in text.splitlines())
    _fail(f"unknown config key in an override: {text}")
  except (ValueError, TypeError, OSError) as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    _fail(f"bad --config: {lines[-1] if lines else e}")


def run(main):
  """absl.app.run(main), printing a UserError as one line (exit status 2), not a traceback."""
  def wrapped(argv):
    logging.set_verbosity(logging.INFO)
    # TensorFlow's own Python INFO lines (checkpoint sharding timings) are noise to a user.
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    try:
      return main(argv)
    except UserError as e:
      if _VERBOSE.value:
        traceback.print_exc()
      _fail(str(e), e.exit_status)
    except KeyboardInterrupt as e:
      # SigTerm (tfsys.train.interrupts): a SIGTERM raised where Ctrl-C's clean-up applies.
      sys.exit(EXIT_PREEMPTED if type(e).__name__ == "SigTerm" else EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001  a bug: one line here, the traceback in a file
      if storage_errno(e) is not None:   # a write without space or permission, where none expected it
        if _VERBOSE.value:
          traceback.print_exc()
        path = getattr(e, "filename", None) or _path_in(str(e))
        _fail(str(storage_error(path, e)) if path else f"a write failed: {_first_line(e)}",
              StorageError.exit_status)
      if _VERBOSE.value:
        traceback.print_exc()
        _fail(f"{type(e).__name__}: {_first_line(e)}", EXIT_BUG)
      log = _crash_log()
      _fail(f"{type(e).__name__}: {_first_line(e)} "
            + (f"(traceback in {log}; --verbose prints it)" if log else "(--verbose for the traceback)"),
            EXIT_BUG)
  app.run(wrapped, flags_parser=_parse_flags)
