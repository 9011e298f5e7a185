"""The real TensorBoard server on a log directory, read over the HTTP API its dashboards use.

`TensorBoard(logdir)` is tfsys.monitor.tensorboard_server's server (the installed
`tensorboard` on 127.0.0.1, every event file loaded before its first answer). `check_workdir` asserts that what it serves for one workdir is what the
run wrote: every scalar equal to the event files' value, the final figures equal to
results.json, the last samples in the text dashboard.
"""
import glob
import html
import json
import math
import os
import re

import numpy as np
import tensorflow as tf

from tfsys.monitor.tensorboard_server import TensorBoardServer


class TensorBoard(TensorBoardServer):
  """The server, with the scalar series as the Scalars dashboard receives them."""

  def scalars(self, run: str, tag: str) -> tuple[list, list]:
    """(steps, values) of one scalar series as the Scalars dashboard receives it."""
    rows = self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
    return [int(step) for _, step, _ in rows], [value for _, _, value in rows]


def event_scalars(run_dir: str) -> dict:
  """{tag: {step: value}} of every scalar summary in run_dir's event files, read directly."""
  out = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name == "scalars":
          out.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
  return out


def event_graphs(run_dir: str) -> set:
  """Tags of the op graphs written to run_dir's event files (tf.summary.trace_export's)."""
  out = set()
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      out.update(v.tag for v in event.summary.value
                 if v.metadata.plugin_data.plugin_name.startswith("graph_"))
      if event.HasField("graph_def"):
        out.add("")   # a run-level graph (tf.compat.v1 writers), shown without a tag
  return out


def progress_lines(log_text: str) -> dict:
  """{step: loss} from the progress lines a training run logged ("step 10/30 | loss 6.411 | ...")."""
  return {int(m.group(1)): float(m.group(2))
          for m in re.finditer(r"step (\d+)/\d+ \| loss ([-\d.naninf]+) \|", log_text)}


def _plain(text_html: str) -> str:
  return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text_html)).split())


def check_workdir(tb: TensorBoard, workdir: str, prefix: str = "", log_text: str = "") -> dict:
  """Asserts what `tb` (whose logdir holds workdir at `prefix`, "" or "name/") serves for it.

  log_text: the run's log, whose progress lines the served train/loss must match (to the 3
  decimals they print). Every backend's chief writes the step's graph (the all-reduce loop
  traces the step it runs, a parameter-server chief the workers' step). Returns
  {run: {tag: (steps, values)}} of every scalar served.
  """
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  train, ev = prefix + "train", prefix + "eval"
  assert {train, ev} <= set(tb.get("/data/runs")), tb.get("/data/runs")

  # Scalars: the tag list, then every series equal to the event files, step by step.
  tags = tb.get("/data/plugin/scalars/tags")
  for tag in ("train/loss", "train/perplexity", "optim/learning_rate", "optim/grad_norm",
              "perf/words_per_sec", "perf/step_secs"):
    assert tag in tags[train], (tag, sorted(tags[train]))
  for tag in ("eval/loss", "eval/perplexity", "eval/test_loss", "eval/test_perplexity"):
    assert tag in tags[ev], (tag, sorted(tags[ev]))
  served = {}
  for run in (train, ev):
    written = event_scalars(os.path.join(workdir, run[len(prefix):]))
    assert set(tags[run]) == set(written), (run, sorted(tags[run]), sorted(written))
    for tag in tags[run]:
      steps, values = tb.scalars(run, tag)
      assert steps == sorted(written[tag]), (run, tag, steps)
      assert values == [written[tag][s] for s in steps], (run, tag)
      served.setdefault(run, {})[tag] = (steps, values)

  steps, loss = served[train]["train/loss"]
  assert steps[-1] == results["step"] and all(map(math.isfinite, loss)), (steps, loss)
  _, ppl = served[train]["train/perplexity"]
  np.testing.assert_allclose(ppl, np.exp(loss), rtol=1e-5)
  if log_text:   # what the console printed is what the dashboard plots
    printed = progress_lines(log_text)
    assert sorted(printed) == steps, (sorted(printed), steps)
    np.testing.assert_allclose(loss, [printed[s] for s in steps], atol=6e-4)
  final = lambda tag: served[ev][tag][1][-1]
  assert served[ev]["eval/perplexity"][0][-1] == results["step"]
  assert final("eval/perplexity") == np.float32(results["valid_perplexity"])
  assert final("eval/test_perplexity") == np.float32(results["test_perplexity"])

  # Text: the sample sentences of every evaluation; the last ones are results.json's.
  assert "eval/samples" in tb.get("/data/plugin/text/tags")[ev]
  texts = tb.get("/data/plugin/text/text", run=ev, tag="eval/samples")
  assert [t["step"] for t in texts] == served[ev]["eval/perplexity"][0], texts
  shown = _plain(texts[-1]["text"])
  assert results["samples"] and all(" ".join(s.replace("\n", " / ").split()) in shown
                                    for s in results["samples"]), (shown, results["samples"])

  # Histograms of the weights at train.histogram_every.
  hist_tags = tb.get("/data/plugin/histograms/tags").get(train, {})
  weights = sorted(t for t in hist_tags if t.startswith("weights/"))
  assert weights, hist_tags
  rows = tb.get("/data/plugin/histograms/histograms", run=train, tag=weights[0])
  assert rows and all(len(buckets) > 0 for _, _, buckets in rows), rows

  # Graphs: the training step's op graph, as the Graphs dashboard loads it.
  info = tb.get("/data/plugin/graphs/info")
  written = event_graphs(os.path.join(workdir, "train"))
  assert written == {"train_step"}, written
  assert info[train]["tags"]["train_step"]["op_graph"], info
  pbtxt = tb.get("/data/plugin/graphs/graph", run=train, tag="train_step", conceptual="false")
  assert isinstance(pbtxt, str) and "node {" in pbtxt and "MatMul" in pbtxt, pbtxt[:500]
  return served


def check_profile(tb: TensorBoard, workdir: str, prefix: str, first: int, last: int) -> None:
  """The trace of steps first..last: on disk where the profile plugin looks, listed by it, and
  its trace viewer showing exactly those train_step calls."""
  traces = glob.glob(os.path.join(workdir, "train", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1, traces
  session = os.path.basename(os.path.dirname(traces[0]))
  run = f"{prefix}train/{session}"
  assert tb.get("/data/plugins_listing")["profile"]["enabled"]
  assert tb.get("/data/plugin/profile/runs") == [run]
  tools = tb.get("/data/plugin/profile/run_tools", run=run)
  assert "overview_page" in tools and any(t.startswith("trace_viewer") for t in tools), tools
  hosts = [h["hostname"] for h in tb.get("/data/plugin/profile/hosts", run=run, tag="trace_viewer")]
  assert hosts == [os.path.basename(traces[0])[:-len(".xplane.pb")]], hosts
  trace = tb.get("/data/plugin/profile/data", run=run, tag="trace_viewer", host=hosts[0])
  calls = [e for e in trace["traceEvents"] if e.get("name") == "train_step"]
  assert len(calls) == last - first + 1, len(calls)
