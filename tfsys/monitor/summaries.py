"""TensorBoard output: the workdir is the log directory, with runs `train` and `eval`.

Tags are grouped by prefix: train/ (loss, perplexity), eval/ (perplexity, loss, samples),
optim/ (learning_rate, grad_norm), perf/ (words_per_sec, step_secs), and weights/ histograms.
"""
import os
import time

import numpy as np
import tensorflow as tf
from tensorboard.plugins.scalar import metadata as scalar_metadata


class Writers:
  """One summary writer per run; each method writes and leaves flushing to TensorBoard's cadence."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._writers, self._series = {}, {}
    self.workdir = workdir

  def _writer(self, run: str):
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self.workdir, run))
    return self._writers[run]

  def scalars(self, run: str, step: int, values: dict) -> None:
    if not self.enabled:
      return
    with self._writer(run).as_default(step=step):
      for tag, value in values.items():
        tf.summary.scalar(tag, value)

  def scalar_series(self, run: str, steps, series: dict) -> None:
    """Several steps' scalars at once: series maps each tag to one value per step in `steps`.

    One compiled call per tag set instead of an eager summary op per value: what a chief that
    logs every step of a fast loop can afford.
    """
    if not self.enabled or not len(steps):
      return
    tags = tuple(series)
    fn = self._series.get((run, tags))
    if fn is None:
      writer = self._writer(run)

      # tf.summary.write with the scalar plugin's metadata: tf.summary.scalar inside the loop
      # would put the loop's name scope ("while/") in front of every tag.
      scalar = scalar_metadata.create_summary_metadata(display_name=None, description=None)

      @tf.function
      def fn(steps, values):
        with writer.as_default():
          for i in tf.range(tf.shape(steps)[0]):
            for j, tag in enumerate(tags):
              tf.summary.write(tag, values[i, j], step=steps[i], metadata=scalar)
      self._series[(run, tags)] = fn
    values = np.array([series[tag] for tag in tags], np.float32).T
    fn(tf.constant(steps, tf.int64), tf.constant(values.reshape(len(steps), len(tags))))

  def histograms(self, run: str, step: int, variables: dict) -> None:
    if not self.enabled:
      return
    with self._writer(run).as_default(step=step):
      for name, v in variables.items():
        tf.summary.histogram(f"weights/{name}", v)

  def text(self, run: str, step: int, tag: str, text: str) -> None:
    if not self.enabled:
      return
    with self._writer(run).as_default(step=step):
      tf.summary.text(tag, text)

  def trace_on(self) -> None:
    if self.enabled:
      tf.summary.trace_on(graph=True)

  def trace_export(self, run: str, name: str, step: int) -> None:
    if self.enabled:
      with self._writer(run).as_default(step=step):
        tf.summary.trace_export(name=name, step=step)

  def graph(self, run: str, name: str, graph: tf.Graph, step: int) -> None:
    """An op graph that was traced but not run here (a function other processes run), under
    the tag `name` in the Graphs tab, as trace_export writes the graph of a function it saw run:
    a RunMetadata whose function graph is `graph`, marked for the graph plugin."""
    if not self.enabled:
      return
    run_metadata = tf.compat.v1.RunMetadata()
    run_metadata.function_graphs.add().pre_optimization_graph.CopyFrom(graph.as_graph_def())
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = "graph_run_metadata_graph"   # trace_export's (version 1)
    metadata.plugin_data.content = b"1"
    with self._writer(run).as_default():
      tf.summary.write(name, tf.constant(run_metadata.SerializeToString()), step=step,
                       metadata=metadata)

  def flush(self) -> None:
    for w in self._writers.values():
      w.flush()


class Throughput:
  """Words/s and seconds/step since the last report, and the estimated time left."""

  def __init__(self, start_step: int, total_steps: int):
    self.total_steps = total_steps
    self._t, self._step, self._words = time.perf_counter(), start_step, 0.0

  def add(self, words: float) -> None:
    self._words += words

  def report(self, step: int) -> dict:
    now = time.perf_counter()
    secs = max(now - self._t, 1e-9)
    steps = max(step - self._step, 1)
    out = {"perf/words_per_sec": self._words / secs, "perf/step_secs": secs / steps}
    self.eta_secs = (self.total_steps - step) * secs / steps
    self._t, self._step, self._words = now, step, 0.0
    return out


def format_duration(secs: float) -> str:
  secs = int(secs)
  h, rem = divmod(secs, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
