"""The installed `tensorboard` served on 127.0.0.1 for a script or a test to read or render.

`TensorBoardServer(logdir)` starts it on a port the OS picks and returns once it answers. It
loads every event file before serving (`--reload_interval=0 --reload_task=blocking`), so the
first answer is complete: no reload race. Used by scripts/tensorboard_screenshot.py and the
tests that read TensorBoard over HTTP.
"""
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from tfsys.errors import UserError


def tensorboard_command() -> list[str]:
  """The console script beside this Python (the venv's), else the module."""
  script = os.path.join(os.path.dirname(sys.executable), "tensorboard")
  return [script] if os.path.isfile(script) else [sys.executable, "-m", "tensorboard.main"]


class TensorBoardServer:
  """One `tensorboard --logdir` process on 127.0.0.1; get() returns an endpoint's JSON or text."""

  def __init__(self, logdir: str, timeout: float = 240.0):
    self._log = tempfile.NamedTemporaryFile("w+", prefix="tensorboard", suffix=".log")  # noqa: SIM115
    self.proc = subprocess.Popen(
        [*tensorboard_command(), f"--logdir={logdir}", "--host=127.0.0.1", "--port=0",
         "--load_fast=false", "--reload_interval=0", "--reload_task=blocking"],
        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
    self.url = None
    try:
      self._wait_until_serving(time.monotonic() + timeout, timeout)
    except BaseException:
      self.close()   # a server that did not come up in time is not left running
      raise

  def _wait_until_serving(self, deadline: float, timeout: float) -> None:
    while self.url is None:   # "TensorBoard 2.21.0 at http://127.0.0.1:PORT/ (Press CTRL+C ...)"
      found = re.search(r"at (http://127\.0\.0\.1:\d+)/", self.output())
      if found:
        self.url = found.group(1)
      elif self.proc.poll() is not None:
        raise UserError(f"tensorboard exited with status {self.proc.returncode}: "
                        + " / ".join(self.output().strip().splitlines()[-3:]))
      elif time.monotonic() > deadline:
        raise UserError(f"tensorboard did not start in {timeout:.0f} s")
      else:
        time.sleep(0.2)
    while True:   # bound before it serves: the first requests may wait in the listen queue
      try:
        self.get("/data/runs")
        return
      except (urllib.error.URLError, ConnectionError):
        if time.monotonic() > deadline:
          raise UserError(f"tensorboard at {self.url} does not answer within {timeout:.0f} s: "
                          + " / ".join(self.output().strip().splitlines()[-3:])) from None
        time.sleep(0.2)

  def output(self) -> str:
    with open(self._log.name, encoding="utf-8", errors="replace") as f:
      return f.read()

  def get(self, path: str, **params):
    url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=120) as r:
      body = r.read()
      if r.headers.get("Content-Encoding") == "gzip":   # the profile plugin gzips regardless
        body = gzip.decompress(body)
    body = body.decode("utf-8")
    try:
      return json.loads(body)
    except json.JSONDecodeError:
      return body

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
