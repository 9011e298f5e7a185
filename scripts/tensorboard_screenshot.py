"""Renders a run's TensorBoard scalars to a PNG in headless Chromium, as a browser shows them.

  python scripts/tensorboard_screenshot.py --logdir=W --out=docs/tensorboard_scalars.png \
      [--tag_filter='train/loss|eval/perplexity'] [--width=1280 --height=1000]

Starts the installed tensorboard on 127.0.0.1 and a free port on --logdir (a workdir, or a
directory of workdirs), waits until it has loaded every event file, opens its Time Series
dashboard in Debian's chromium (`apt-get install -y chromium`; or --chromium=PATH), waits until
every card shown has drawn a curve for every run that has its tag, writes the PNG and stops both.
--tag_filter is the dashboard's own filter box: a regular expression over tags. The command
that made docs/tensorboard_scalars.png is in docs/tensorboard.md.

Chromium is driven over its DevTools protocol on a pipe (--remote-debugging-pipe), so that the
page itself can be asked whether it has drawn: a plain `chromium --screenshot` shoots after a
fixed virtual-time budget, which did not reliably cover TensorBoard's data requests (2 of 5
shots here had empty cards).
"""
from tfsys import cli  # first: sets TensorFlow's log level

import base64
import fcntl
import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

from absl import flags, logging

from tfsys.errors import UserError
from tfsys.monitor.tensorboard_server import TensorBoardServer

_LOGDIR = flags.DEFINE_string("logdir", None, "a workdir written by scripts/train.py, or a "
                              "directory of them")
_OUT = flags.DEFINE_string("out", None, "the PNG to write")
_WIDTH = flags.DEFINE_integer("width", 1280, "window width in pixels")
_HEIGHT = flags.DEFINE_integer("height", 1000, "window height in pixels (1000 at 1280 wide: two "
                               "rows of two cards)")
_TAG_FILTER = flags.DEFINE_string("tag_filter", "", "show only tags matching this regular "
                                  "expression (the dashboard's filter box, case-insensitive); "
                                  "\"\" = all")
_CHROMIUM = flags.DEFINE_string("chromium", "chromium", "the Chromium (or Chrome) binary")
_TIMEOUT = flags.DEFINE_integer("timeout_secs", 300, "give up on tensorboard or chromium after this")
flags.mark_flags_as_required(["logdir", "out"])


# The Python side of --remote-debugging-pipe: Chromium reads commands from fd 3 and writes
# replies and events to fd 4, one JSON object each, ended by a NUL byte. This trampoline puts the
# two pipe ends there (subprocess can keep fds open but not renumber them) and becomes Chromium.
_ON_FDS_3_AND_4 = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
                   "os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")

# Per scalar card on the page: its tag (the title TensorBoard 2.21 gives the card's heading),
# whether it still shows its loading spinner, and how many series it has drawn: SVG paths of two
# points or more (the icons' paths are not series), and circles for a series of one point (the
# ones in .dots mark the hovered step).
_CARDS_JS = """[...document.querySelectorAll('scalar-card')].map(card => [
  (card.querySelector('tb-truncated-path') || {getAttribute: () => null}).getAttribute('title'),
  !!card.querySelector('mat-spinner'),
  [...card.querySelectorAll('line-chart path')].filter(p => !p.closest('mat-icon') &&
      (p.getAttribute('d') || '').includes('L')).length +
  [...card.querySelectorAll('line-chart circle')].filter(c => !c.closest('.dots')).length])"""


_ANSWER_SECS = 60   # for one protocol command; a whole page load has --timeout_secs


def _high_fd(fd: int) -> int:
  """The same pipe end at a number of 10 or more, clear of the 3 and 4 it is moved to."""
  high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
  os.close(fd)
  return high


class _Chromium:
  """Headless Chromium and one page, driven over the DevTools protocol on a pipe."""

  def __init__(self, binary: str, deadline: float):
    self.binary, self.deadline = binary, deadline
    self._profile = tempfile.TemporaryDirectory(prefix="chromium", ignore_cleanup_errors=True)
    child_in, self._to_child = os.pipe()
    self._from_child, child_out = os.pipe()
    child_in, child_out = _high_fd(child_in), _high_fd(child_out)
    self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
    self.proc = subprocess.Popen(
        [sys.executable, "-c", _ON_FDS_3_AND_4, str(child_in), str(child_out), binary,
         # The network is closed here: without --disable-quic, -background-networking,
         # -component-update and -sync Chromium hangs on refused connections to Google's services.
         "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={self._profile.name}", "--remote-debugging-pipe", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "about:blank"],
        pass_fds=(child_in, child_out), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=self._stderr, start_new_session=True)
    os.close(child_in)
    os.close(child_out)
    self._buffer, self._id, self.session = b"", 0, None

  def _stderr_tail(self) -> str:
    self._stderr.seek(0)
    lines = [l.strip() for l in self._stderr.read().splitlines() if l.strip()]
    return lines[-1] if lines else "no output"

  def call(self, method: str, **params):
    """Sends one command (to the page once attached) and returns its result; events are skipped."""
    self._id += 1
    message = {"id": self._id, "method": method, "params": params}
    if self.session:
      message["sessionId"] = self.session
    try:
      os.write(self._to_child, json.dumps(message).encode() + b"\0")
    except BrokenPipeError:
      raise UserError(f"{self.binary} exited: {self._stderr_tail()}") from None
    while True:
      while b"\0" not in self._buffer:
        if not select.select([self._from_child], [], [], _ANSWER_SECS)[0]:
          raise UserError(f"{self.binary} did not answer {method} in {_ANSWER_SECS} s")
        chunk = os.read(self._from_child, 1 << 20)
        if not chunk:
          raise UserError(f"{self.binary} exited: {self._stderr_tail()}")
        self._buffer += chunk
      raw, self._buffer = self._buffer.split(b"\0", 1)
      reply = json.loads(raw)
      if reply.get("id") == self._id:
        if "error" in reply:
          raise UserError(f"{self.binary}: {method} failed: {reply['error'].get('message')}")
        return reply["result"]

  def open_page(self, width: int, height: int) -> None:
    target = self.call("Target.createTarget", url="about:blank")["targetId"]
    self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
              deviceScaleFactor=1, mobile=False)

  def evaluate(self, expression: str):
    out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
    if "exceptionDetails" in out:
      details = out["exceptionDetails"]
      raise UserError(f"in the page: {details.get('exception', {}).get('description') or details}")
    return out["result"].get("value")

  def wait_for(self, what: str, expression: str, done) -> object:
    """Polls `expression` in the page until done(value); a page cannot notify us."""
    while True:
      value = self.evaluate(expression)
      if done(value):
        return value
      if time.monotonic() > self.deadline:
        raise UserError(f"TensorBoard's page did not show {what} in time (--timeout_secs); "
                        f"last seen: {value!r}")
      time.sleep(0.2)

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        os.write(self._to_child, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        self.proc.wait(timeout=20)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
    for fd in (self._to_child, self._from_child):
      os.close(fd)
    self._stderr.close()
    self._profile.cleanup()


def _screenshot(binary: str, server_url: str, query: dict, runs_per_tag: dict, out: str) -> None:
  """Shoots the Time Series dashboard once each card of runs_per_tag ({tag: how many runs have
  it}) has drawn a series for each of those runs."""
  browser = _Chromium(binary, time.monotonic() + _TIMEOUT.value)
  try:
    browser.open_page(_WIDTH.value, _HEIGHT.value)
    # TensorBoard opens its settings pane on a first visit, over a quarter of the width; its
    # saved settings close it. They are the origin's localStorage: written from a page of the
    # server before the dashboard is loaded.
    browser.call("Page.navigate", url=server_url + "/data/runs")
    browser.wait_for("/data/runs", "location.pathname + ' ' + document.readyState",
                     lambda v: v == "/data/runs complete")
    browser.evaluate("localStorage.setItem('_tb_global_settings', "
                     "JSON.stringify({timeSeriesSettingsPaneOpened: false}))")
    url = f"{server_url}/?{urllib.parse.urlencode(query)}#timeseries"
    logging.info("opening %s", url)
    browser.call("Page.navigate", url=url)
    # A card's series (a smoothed and a raw one per run) all come with its one data request.
    browser.wait_for(
        f"a series for each run in the cards of {runs_per_tag} ([tag, loading, drawn])",
        _CARDS_JS, lambda cards: len(cards) == len(runs_per_tag) and all(
            not loading and drawn >= runs_per_tag.get(tag, 1 << 30) for tag, loading, drawn in cards))
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
  finally:
    browser.close()
  with open(out, "wb") as f:
    f.write(png)


def main(argv):
  del argv
  logdir, out = os.path.abspath(_LOGDIR.value), os.path.abspath(_OUT.value)
  if not glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
    raise UserError(f"no TensorBoard event files under {logdir}: give --logdir a workdir "
                    "written by scripts/train.py, or a directory of them")
  chromium = shutil.which(_CHROMIUM.value)
  if chromium is None:
    raise UserError(f"{_CHROMIUM.value} not found: install it (apt-get install -y chromium) or "
                    "give --chromium=PATH to a Chromium or Chrome binary")
  if _TAG_FILTER.value:
    try:
      re.compile(_TAG_FILTER.value)
    except re.error as e:
      raise UserError(f"--tag_filter={_TAG_FILTER.value!r} is not a regular expression: {e}") from None
  os.makedirs(os.path.dirname(out), exist_ok=True)
  if os.path.exists(out):
    os.remove(out)   # so that a failed screenshot is not mistaken for the old one
  server = TensorBoardServer(logdir, _TIMEOUT.value)
  try:
    # A filter that matches nothing renders an empty page that looks like a failed load.
    runs = server.get("/data/plugin/scalars/tags")
    tags = sorted({t for run_tags in runs.values() for t in run_tags})
    shown = [t for t in tags if re.search(_TAG_FILTER.value, t, re.IGNORECASE)]  # as the page does
    if not shown:
      raise UserError(f"--tag_filter={_TAG_FILTER.value!r} matches none of the scalar tags of "
                      f"{logdir}: {', '.join(tags) or 'none'}")
    logging.info("%d scalar tags shown: %s", len(shown), ", ".join(shown))
    runs_per_tag = {t: sum(t in run_tags for run_tags in runs.values()) for t in shown}
    # forceSVG, TensorBoard's own feature flag: its default draws with WebGL in a worker's
    # OffscreenCanvas, which a page's DOM does not show (and which headless Chromium without a
    # GPU draws late or not at all). SVG series are elements of the page, counted by _CARDS_JS.
    query = {"forceSVG": "true"}
    if _TAG_FILTER.value:
      query["tagFilter"] = _TAG_FILTER.value
    _screenshot(chromium, server.url, query, runs_per_tag, out)
  finally:
    server.close()
  print(f"{out}: TensorBoard's scalars of {logdir} ({os.path.getsize(out) // 1024} KB)")


if __name__ == "__main__":
  cli.run(main)
