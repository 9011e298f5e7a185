"""What the two parameter-server chiefs (sync_chief.py, async_chief.py) do alike as executors of
the controller (tfsys/train/executor.py)."""
import tensorflow as tf
from absl import logging

from tfsys.train.ps import memory
from tfsys.train.ps.server import PSWatch
from tfsys.train.ps.state import PSState
from tfsys.train.ps.workers import gradient_function


def write_step_graph(r, shared) -> None:
  """The chief writes the workers' step graph (forward and backward on worker 0's rows) to the
  train run as `train_step`, as the all-reduce loop does with the step it runs: it traces the
  function, it does not run it. Only at the first start, like the all-reduce loop."""
  if r.start or not r.writers.enabled:
    return
  num_workers = shared.ps.num_workers
  context = tf.distribute.InputContext(num_input_pipelines=num_workers, input_pipeline_id=0,
                                       num_replicas_in_sync=num_workers)
  try:
    batch = {k: tf.constant(v) for k, v in next(r.stream.replica_windows(0, context)).items()}
    traced = gradient_function(r, shared, 0).get_concrete_function(
        batch, r.model.initial_state(r.local_batch), tf.constant(0, tf.int64))
    r.writers.graph("train", "train_step", traced.graph, r.start)
  except Exception as e:  # noqa: BLE001  (a picture for the Graphs tab: training goes on)
    logging.warning("[chief] the step's graph was not written to TensorBoard: %s", e)


class ChiefExecutor:
  """What the two parameter-server chiefs do alike as executors (executor.py): their variables
  are a copy of the state on the ps, brought back when the controller needs them."""
  max_steps_per_call = None   # a stretch runs up to the next duty, however long
  agreed_stop = False         # no collective to pass a SIGTERM on: the chief stops the others

  def __init__(self, r, shared: PSState, watch: PSWatch):
    self.r, self.s, self.ps, self.watch = r, shared, shared.ps, watch
    self._step, self._pulled = r.start, set()

  def to_host(self, slots: bool) -> None:
    """The parameters (and slots) back from the ps, at most once per stretch each."""
    wanted = {"params", "slots"} if slots else {"params"}
    if "params" in wanted - self._pulled:
      self.s.params.pull(self.r.variables)
    if "slots" in wanted - self._pulled:
      self.s.pull_slots()
    self._pulled |= wanted
    self.r.step_var.assign(self._step)   # the step is counted on the ps

  def after_evaluation(self) -> None:
    self.s.lr_decay.assign(self.r.learning_rate.decay)   # the plateau decision, for the ps

  def state_rows(self):
    return None   # the workers carry their own rows' state

  def lost(self, error: Exception):
    return self.watch.explain(error)

  def report_memory(self) -> None:
    """What each ps task holds for this job, computed from the shapes (memory.py)."""
    ps = self.ps
    report = memory.plan(self.r.config, self.r.model.vocab_size, len(ps.ps_devices),
                         ps.num_workers, ps.kind, ps.replicas_to_aggregate)
    logging.info("[chief] memory per ps task: %s", memory.describe(report))
