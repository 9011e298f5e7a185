"""sync_backup's step record: one JSON line per applied step, written by the chief.

Each line holds the workers used (with each one's gradient fingerprint and compute seconds), the
gradients dropped as [worker, the step they were computed for, compute seconds], the step's
seconds and the fingerprint of the averaged gradient that was applied. tests/ and bench/ read it
to check which gradients made each step.
"""
import collections
import json
import os
import time

import numpy as np
from absl import logging

from tfsys.train.executor import Stretch

STEP_RECORD = "sync_steps.jsonl"


def open_step_record(workdir: str, start: int):
  """STEP_RECORD for appending, holding exactly one record per step up to `start`, the step the
  run resumes at. A chief that died wrote records of steps after its last checkpoint (they are
  recomputed now, with other workers and gradients) and may have lost the last few it had not
  flushed (those steps are lost from the model too): the records after `start` are dropped,
  atomically, so that the file is the history of the run as it resumes."""
  path = os.path.join(workdir, STEP_RECORD)
  if os.path.exists(path):
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
          dropped += 1     # a line cut short by the kill
          continue
        if step <= start and (not kept or step > kept[-1][0]):
          kept.append((step, line if line.endswith("\n") else line + "\n"))
        else:
          dropped += 1
    if dropped:
      logging.info("[chief] %s: dropped %d record(s) of steps after step %d, where the run "
                   "resumes", STEP_RECORD, dropped, start)
      tmp = path + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line for _, line in kept)
      os.replace(tmp, path)
  return open(path, "a", encoding="utf-8")


class StepRecorder:
  """The chief's account of each applied step: its STEP_RECORD line, the per-step scalars
  (gradients used and dropped, step seconds), the counts per worker and the staleness of the
  dropped gradients for the progress lines."""

  def __init__(self, r, num_workers: int, log_workers_every: int):
    self.r, self.num_workers, self.log_workers_every = r, num_workers, log_workers_every
    self.used_by = np.zeros(num_workers, np.int64)
    self.dropped_by = np.zeros(num_workers, np.int64)
    self.staleness = []    # (worker, steps behind when its dropped gradient arrived)
    self._file, self._t_prev = None, 0.0

  def open(self) -> None:
    self._file = open_step_record(self.r.workdir, self.r.start)
    self._t_prev = time.time()

  def record(self, first: int, results, rates) -> Stretch:
    """results: [(used, dropped, stats, ps time)] of the steps first + 1, ... (SyncChief._steps);
    writes their records (flushed) and returns them as a Stretch."""
    series = collections.defaultdict(list)
    losses = []
    for k, (used, dropped, (norm, _, _, applied), when) in enumerate(results):
      step = first + k + 1
      step_secs, self._t_prev = max(when - self._t_prev, 0.0), when
      self._file.write(json.dumps({
          "step": step, "used": sorted(used), "dropped": dropped,
          "secs": round(step_secs, 4),
          "fingerprints": {str(w): fp for w, (_, fp, _) in sorted(used.items())},
          "compute_secs": {str(w): secs for w, (_, _, secs) in sorted(used.items())},
          "applied": float(applied)}) + "\n")
      losses.append(float(np.mean([loss for loss, _, _ in used.values()])))
      for w in used:
        self.used_by[w] += 1
      for w, t, _ in dropped:
        self.dropped_by[w] += 1
        self.staleness.append((w, step - 1 - t))   # steps behind when it arrived
      series["sync/gradients_used"].append(len(used))
      series["sync/gradients_dropped"].append(len(dropped))
      series["sync/step_secs"].append(step_secs)
      if step % self.log_workers_every == 0 or step == self.r.start + 1:
        late = ", ".join(f"worker{w} (step {t + 1})" for w, t, _ in dropped)
        logging.info("[chief] step %d used %s%s", step, ", ".join(f"worker{w}" for w in sorted(used)),
                     f"; dropped {late}" if dropped else "")
    self._file.flush()   # every applied step's record, before the chief's next duty
    return Stretch(start=first, steps=len(results), losses=np.array(losses),
                   grad_norms=np.array([float(st[0]) for _, _, st, _ in results]),
                   learning_rates=np.asarray(rates), series=dict(series))

  def progress_scalars(self) -> dict:
    """Counts since the start, and the mean staleness since the last progress line."""
    lags = self.staleness
    self.staleness = []
    return {
        **{f"sync/used_by/worker{w}": int(self.used_by[w]) for w in range(self.num_workers)},
        **{f"sync/dropped_by/worker{w}": int(self.dropped_by[w]) for w in range(self.num_workers)},
        "sync/staleness_mean": float(np.mean([lag for _, lag in lags])) if lags else 0.0,
        **{f"sync/staleness/worker{w}": float(np.mean([lag for v, lag in lags if v == w]))
           for w in sorted({v for v, _ in lags})}}

  def log_totals(self) -> None:
    logging.info("[chief] gradients used per worker %s, dropped per worker %s",
                 self.used_by.tolist(), self.dropped_by.tolist())

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
