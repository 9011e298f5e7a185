"""What every script shares: quiet TensorFlow start-up and one-line errors for user mistakes."""
import logging as std_logging
import os
import sys

# Before TensorFlow is imported: hide its C++ start-up chatter where it can be hidden. (The
# "Could not find cuda drivers" lines on CPU machines are printed before TensorFlow reads this.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from tfsys.errors import UserError  # noqa: E402


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


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
      _fail(str(e))
    except KeyboardInterrupt:
      sys.exit(130)
  app.run(wrapped, flags_parser=_parse_flags)
