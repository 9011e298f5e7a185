"""A Python process started ahead with TensorFlow imported, waiting for the script it is to run.

Most of a script's start-up on these machines is importing TensorFlow (seconds of one core's
work). A test that runs scripts one after another starts the next one's process while the one
before it runs, then gives it its command: `python SCRIPT ARGS` exactly (run as __main__, the
script's folder first on sys.path). Until it is given its command it has read and written
nothing, so it cannot disturb what the test checks."""
import contextlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (TF_CPP_MIN_LOG_LEVEL as tfsys/cli.py sets it, which must precede TensorFlow's import)
CODE = ("import json, os, runpy, sys; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2'); "
        "import tensorflow; "
        "sys.argv = json.loads(sys.stdin.readline()); "
        "sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0])); "
        "runpy.run_path(sys.argv[0], run_name='__main__')")


def start(**popen):
  """The waiting process (stdin a pipe; other Popen arguments as given, cwd the repository)."""
  popen.setdefault("cwd", ROOT)
  return subprocess.Popen([sys.executable, "-c", CODE], stdin=subprocess.PIPE, text=True, **popen)


def give(proc, script_and_args):
  """Starts `python SCRIPT ARGS` in proc (which reads no further input)."""
  try:
    proc.stdin.write(json.dumps(list(script_and_args)) + "\n")
    proc.stdin.close()
  except BrokenPipeError:
    pass   # it has ended already: its status and output say why


def run(proc, script_and_args, timeout):
  """subprocess.run(..., capture_output=True, text=True) of the command, in proc (a start() with
  stdout and stderr piped); proc is killed if it outlives `timeout`."""
  try:
    stdout, stderr = proc.communicate(json.dumps(list(script_and_args)) + "\n", timeout=timeout)
  finally:
    stop(proc)
  return subprocess.CompletedProcess(script_and_args, proc.returncode, stdout, stderr)


def stop(proc):
  proc.kill()
  proc.wait()


@contextlib.contextmanager
def started():
  """start() with stdout and stderr piped, for run(); killed on leaving if still there."""
  proc = start(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    yield proc
  finally:
    stop(proc)
