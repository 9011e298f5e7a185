"""What every script shares: quiet TensorFlow start-up and one-line errors for user mistakes."""
import logging as std_logging
import os
import sys

# Before TensorFlow is imported: hide its C++ start-up chatter (CUDA probing on CPU machines).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, logging  # noqa: E402

from tfsys.errors import UserError  # noqa: E402


def run(main):
  """absl.app.run(main), printing a UserError as one line (exit status 2), not a traceback."""
  def wrapped(argv):
    logging.set_verbosity(logging.INFO)
    # TensorFlow's own Python INFO lines (checkpoint sharding timings) are noise to a user.
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      sys.exit(130)
  app.run(wrapped)
