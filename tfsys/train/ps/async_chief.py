"""async_ps's chief, an executor: the workers apply their own gradients on the ps tasks; the
chief watches the global step go by, and the controller logs, evaluates and checkpoints as it
passes each duty (it may pass one by a few updates: nothing waits for the chief)."""
import collections
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tfsys.distribute import ps as ps_lib
from tfsys.train.executor import Stretch
from tfsys.train.ps.chief import ChiefExecutor, write_step_graph

POLL_SECS = 0.05


class AsyncChief(ChiefExecutor):

  def __init__(self, r, shared, watch):
    super().__init__(r, shared, watch)
    self.by_worker = collections.Counter()   # updates applied per worker
    s = shared

    @tf.function
    def take_commits():
      with tf.device(s.devices[0]):
        return ps_lib.dequeue_all(s.commits, ps_lib.COMMIT_TYPES)
    self._take_commits = take_commits

  def begin(self) -> None:
    r, s = self.r, self.s
    s.push(r.start)
    s.mark_started()
    write_step_graph(r, s)
    logging.info("[chief] state on %d ps task(s); %d asynchronous workers", len(s.devices),
                 s.ps.num_workers)
    self.report_memory()

  def train(self, num_steps: int, interrupts) -> Stretch:
    """Waits until the workers have applied num_steps more updates (or a few more: they do not
    wait for the chief); on a Ctrl-C or SIGTERM it stops them first (halt)."""
    r, first = self.r, self._step
    target = min(first + num_steps, r.total_steps)
    losses, step = [], first
    while step < target and not interrupts.requested:
      time.sleep(POLL_SECS)
      workers, _, loss, _, _ = (t.numpy() for t in self._take_commits())
      losses.extend(loss.tolist())
      self.by_worker.update(workers.tolist())
      step = min(int(self.s.read_step()), r.total_steps)
    if interrupts.requested:
      step = self.halt()
    self._step = step
    self._pulled.clear()
    rate = float(r.learning_rate(tf.constant(step, tf.int64)))
    return Stretch(start=first, steps=step - first, losses=np.array(losses),
                   grad_norms=np.zeros(0), learning_rates=np.array([rate]),
                   stopped=interrupts.requested)

  def halt(self) -> int:
    """Stops the workers (they watch the started marker), so that the parameters saved are those
    of the step recorded: updates in flight still land (at most one a worker)."""
    self.s.mark_stopped()
    self._step = self.s.settled_step()
    self._pulled.clear()
    return self._step

  def progress_scalars(self) -> dict:
    return {f"async/applied_by/worker{w}": n for w, n in self.by_worker.items()}

  def end(self) -> None:
    if self._step < self.r.total_steps:
      self.s.mark_stopped()   # stopped early (a second Ctrl-C, an error): the workers too
    logging.info("[chief] updates applied per worker: %s", dict(sorted(self.by_worker.items())))
