"""Every failure of a script is one line with its kind's exit status; a bug's traceback goes to
a log file named in that line, or to the console with --verbose."""
import os
import subprocess
import sys

from tfsys import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = """
import sys
from absl import flags
from tfsys import cli, errors
flags.DEFINE_string("workdir", None, "")
KIND = sys.argv.pop(1)
def main(argv):
  if KIND == "bug":
    raise RuntimeError("boom in main")
  if KIND == "disk":
    raise OSError(28, "No space left on device", "/data/run/ckpt")
  raise getattr(errors, KIND)("the one line")
cli.run(main)
"""


def _run(tmp_path, kind, *flags):
  script = tmp_path / "script.py"
  script.write_text(SCRIPT)
  return subprocess.run([sys.executable, str(script), kind, *flags], capture_output=True,
                        text=True, cwd=ROOT, timeout=60)


def test_each_kind_of_error_has_its_own_status(tmp_path):
  for kind, status in (("UserError", 2), ("TaskLostError", 3), ("StorageError", 4),
                       ("WorkdirBusyError", 6), ("PreemptedError", 75)):
    proc = _run(tmp_path, kind)
    assert proc.returncode == status == getattr(errors, kind).exit_status, (kind, proc.stderr)
    assert proc.stderr.strip() == "error: the one line", proc.stderr
  disk = _run(tmp_path, "disk")
  assert disk.returncode == 4 and disk.stderr.startswith(
      "error: cannot write /data/run/ckpt: the disk is full"), disk.stderr


def test_a_bug_is_one_line_and_its_traceback_goes_to_a_file_or_with_verbose(tmp_path):
  workdir = tmp_path / "run"
  proc = _run(tmp_path, "bug", f"--workdir={workdir}")
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: RuntimeError: boom in main (traceback in "), lines
  log = lines[0].split("(traceback in ")[1].split(";")[0]
  assert os.path.dirname(log) == str(workdir / "logs")
  assert "Traceback" in open(log).read() and 'raise RuntimeError("boom in main")' in open(log).read()
  verbose = _run(tmp_path, "bug", "--verbose")
  assert verbose.returncode == 1 and "Traceback" in verbose.stderr
  assert verbose.stderr.strip().splitlines()[-1] == "error: RuntimeError: boom in main"
