"""The controller's cadence with a fake executor: duties land on exactly the configured steps,
however many steps a call runs, and an interruption saves the last completed step."""
import signal
import types

import ml_collections
import numpy as np
import pytest

from tfsys.errors import PreemptedError
from tfsys.monitor import StepProfiler
from tfsys.train.controller import Controller, crossed
from tfsys.train.executor import Stretch
from tfsys.train.run import NonFiniteLossError


class _Writers:
  enabled = True

  def __init__(self):
    self.scalar_steps, self.histogram_steps = {}, []

  def scalars(self, run, step, values):
    for k in values:
      self.scalar_steps.setdefault(k, []).append(step)

  def scalar_series(self, run, steps, series):
    for k in series:
      self.scalar_steps.setdefault(k, []).extend(steps)

  def histograms(self, run, step, variables):
    self.histogram_steps.append(step)

  def text(self, *args):
    pass

  def flush(self):
    pass


class _Step:
  def __init__(self, value):
    self.value = value

  def assign(self, value):
    self.value = value

  def numpy(self):
    return self.value


class _Run:
  """What the controller reads of a Run, with a log of its checkpoints and evaluations."""

  def __init__(self, tmp_path, total=50, start=0, log=10, checkpoint=20, evaluate=25,
               histogram=15, noise=0):
    config = ml_collections.ConfigDict()
    config.train = dict(log_every=log, checkpoint_every=checkpoint, histogram_every=histogram,
                        divergence_factor=2.0)
    config.monitor = dict(noise_scale_every=noise, noise_scale_decay=0.9)
    config.optim = dict(warmup_steps=0)
    self.config, self.workdir = config, str(tmp_path)
    self.total_steps, self.eval_every, self.start = total, evaluate, start
    self.vocab = list(range(100))
    self.writers = _Writers()
    self.saved, self.evaluated = [], []
    self.step_var = _Step(start)
    self.words_per_step, self.local_batch, self.batch, self.n_params = 10, 2, 4, 1
    self.is_chief, self.variables = True, []
    self.lock = types.SimpleNamespace(release=lambda: None)
    self.checkpointer = types.SimpleNamespace(latest=None, close=lambda: None)
    self.model = types.SimpleNamespace(scalars=lambda sums, step: {})
    self.learning_rate = types.SimpleNamespace(after_eval=lambda ppl: False)
    self.loss_scale = None   # float16's only
    self.stream = types.SimpleNamespace(failure=None)   # a UserError its generator raised
    run = self

    class Task:
      def evaluate(self, split):
        if split == "valid":
          run.evaluated.append(run.step_var.value)
        return {"loss": 1.0, "perplexity": 2.7, "num_tokens": 5}

      def samples(self, step):
        return []

      def train_figures(self):
        return {}

      def summary(self, result):
        return ""
    self.task = Task()

  def save(self, step, rows):
    self.saved.append(step)


class _Executor:
  """Runs steps instantly; the loss of step s is `losses(s)`. `signal_at` raises a signal in
  the middle of the call that runs that step."""
  agreed_stop = True
  alone = False   # like multi_worker: a request rides the next step to the other workers

  def __init__(self, run, per_call, losses=lambda s: 1.0, signal_at=None, sig=signal.SIGINT):
    self.r, self.max_steps_per_call = run, per_call
    self.losses, self.signal_at, self.sig = losses, signal_at, sig
    self.calls = []

  def begin(self):
    pass

  def train(self, n, interrupts):
    start = self.r.step_var.value
    stop = interrupts.requested   # the flag the call's steps pass on, read as it starts
    if stop and self.alone:
      return Stretch(start=start, steps=0, losses=np.zeros(0), grad_norms=np.zeros(0),
                     learning_rates=np.zeros(0), stopped=True)
    if stop:   # a request rides the next step: every worker stops after it
      n = 1
    steps = list(range(start + 1, start + n + 1))
    self.calls.append((steps[0], steps[-1]))
    if self.signal_at in steps:
      signal.raise_signal(self.sig)
    self.r.step_var.value = steps[-1]
    return Stretch(start=start, steps=n, losses=np.array([self.losses(s) for s in steps]),
                   grad_norms=np.ones(n), learning_rates=np.ones(n),
                   noise=(np.ones(n), np.ones(n)), stopped=stop)

  def halt(self):
    return self.r.step_var.value

  def to_host(self, slots):
    pass

  def after_evaluation(self):
    pass

  def state_rows(self):
    return None

  def progress_scalars(self):
    return {}

  def end(self):
    pass

  def lost(self, e):
    return None


def _train(run, executor, profile=""):
  profiler = StepProfiler(profile, run.workdir)
  return Controller(run, executor, profiler).train()


@pytest.fixture
def sigint():
  # A test run started in the background inherits SIGINT ignored; these tests need a Ctrl-C.
  inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, inherited)


def test_crossed():
  assert crossed(10, 9, 10) and crossed(10, 5, 23) and not crossed(10, 10, 19)
  assert not crossed(0, 0, 100)


@pytest.mark.parametrize("per_call", [1, 7, 1000])
def test_duties_land_on_their_exact_steps(tmp_path, per_call):
  run = _Run(tmp_path, total=50, log=10, checkpoint=20, evaluate=25, histogram=15, noise=4)
  executor = _Executor(run, per_call)
  results = _train(run, executor)
  assert results["step"] == 50
  # Checkpoints at 20 and 40, at the evaluation at 25, and at the end; evaluations at 25 and
  # at the end (the final validation).
  assert run.saved == [20, 25, 40, 50]
  assert run.evaluated == [25, 50]
  assert run.writers.scalar_steps["train/loss"] == [10, 20, 30, 40, 50]
  assert run.writers.histogram_steps == [15, 30, 45]
  assert run.writers.scalar_steps["noise/b_simple"] == list(range(4, 51, 4))
  # No call runs past a duty or more than per_call steps, and every step runs once.
  ran = [s for a, b in executor.calls for s in range(a, b + 1)]
  assert ran == list(range(1, 51))
  assert all(b - a + 1 <= per_call for a, b in executor.calls)
  ends = {b for _, b in executor.calls}
  assert {10, 15, 20, 25, 30, 40, 45, 50} <= ends
  if per_call == 1000:   # exactly the duty steps: no call ends anywhere else
    assert ends == {10, 15, 20, 25, 30, 40, 45, 50}


def test_a_resumed_run_keeps_the_same_cadence(tmp_path):
  run = _Run(tmp_path, total=50, start=23, log=10, checkpoint=20, evaluate=25, histogram=15)
  _train(run, _Executor(run, 1000))
  assert run.saved == [25, 40, 50]
  assert run.writers.scalar_steps["train/loss"] == [30, 40, 50]


def test_profiled_steps_run_one_per_call(tmp_path):
  run = _Run(tmp_path, total=20, log=10, checkpoint=100, evaluate=100, histogram=100)
  executor = _Executor(run, 1000)
  _train(run, executor, profile="3,5")
  assert executor.calls == [(1, 2), (3, 3), (4, 4), (5, 5), (6, 10), (11, 20)]


@pytest.mark.parametrize("per_call", [1, 6])
def test_ctrl_c_in_a_call_saves_the_last_completed_step(tmp_path, sigint, per_call):
  run = _Run(tmp_path, total=50)
  executor = _Executor(run, per_call, signal_at=13)
  with pytest.raises(KeyboardInterrupt):
    _train(run, executor)
  # The call that held step 13 completes; the request rides the next call's one step, after
  # which every worker stops: that step is the one saved.
  holding = [b for a, b in executor.calls if a <= 13 <= b]
  assert executor.calls[-1] == (holding[0] + 1,) * 2 and run.saved == [holding[0] + 1]
  assert run.saved == [14 if per_call == 1 else 16]   # calls 1-6, 7-10 (a duty), 11-15 (one)


def test_ctrl_c_in_a_call_of_a_process_alone_saves_the_step_it_completed(tmp_path, sigint):
  run = _Run(tmp_path, total=50)
  executor = _Executor(run, 1, signal_at=13)
  executor.alone = True   # single, mirrored: nobody to agree with
  with pytest.raises(KeyboardInterrupt):
    _train(run, executor)
  assert executor.calls[-1] == (13, 13) and run.saved == [13]


def test_sigterm_saves_then_says_preempted(tmp_path):
  run = _Run(tmp_path, total=50)
  executor = _Executor(run, 1, signal_at=7, sig=signal.SIGTERM)
  previous = signal.getsignal(signal.SIGTERM)
  try:
    with pytest.raises(PreemptedError, match="at step 8"):
      _train(run, executor)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert run.saved == [8]


@pytest.mark.parametrize("kind", ["agreed", "alone", "chief"])
def test_ctrl_c_during_an_evaluation_stops_once_it_is_done(tmp_path, sigint, kind):
  """A signal in the duties is a request, acted on at the loop's boundary (raised inside an
  eager TensorFlow call it once crashed a chief): the evaluation finishes and its step is saved;
  the all-reduce backends pass the request on with the next step."""
  run = _Run(tmp_path, total=50, evaluate=25)
  evaluate = type(run.task).evaluate

  class Task(type(run.task)):
    def evaluate(self, split):
      signal.raise_signal(signal.SIGINT)
      return evaluate(self, split)
  run.task = Task()
  executor = _Executor(run, 1000)
  executor.alone = kind == "alone"
  executor.agreed_stop = kind != "chief"
  if kind == "chief":   # like async_ps: its workers go on until halted, then settle
    executor.halt = lambda: run.step_var.value + 2
  with pytest.raises(KeyboardInterrupt):
    _train(run, executor)
  assert run.evaluated == [25]
  if kind == "agreed":   # every worker runs one more step, then all save it
    assert executor.calls[-1] == (26, 26) and run.saved == [20, 25, 26]
  elif kind == "alone":  # nobody to tell: the step of the evaluation is the one saved
    assert executor.calls[-1] == (21, 25) and run.saved == [20, 25]
  else:                  # the chief halts its workers, then saves the step they settled on
    assert executor.calls[-1] == (21, 25) and run.saved == [20, 25, 27]


@pytest.mark.parametrize("kind", ["agreed", "chief"])
def test_a_second_ctrl_c_during_an_evaluation_leaves_at_once(tmp_path, sigint, kind):
  run = _Run(tmp_path, total=50, evaluate=25)

  class Task(type(run.task)):
    def evaluate(self, split):
      signal.raise_signal(signal.SIGINT)
      signal.raise_signal(signal.SIGINT)
      raise AssertionError("not reached: the second Ctrl-C leaves")
  run.task = Task()
  executor = _Executor(run, 1000)
  executor.agreed_stop = kind != "chief"
  with pytest.raises(KeyboardInterrupt):
    _train(run, executor)
  assert run.saved == [20]   # the evaluation's step is not saved


def test_a_non_finite_loss_stops_before_its_step_is_saved(tmp_path):
  run = _Run(tmp_path, total=50, checkpoint=20)
  executor = _Executor(run, 1000, losses=lambda s: float("nan") if s == 17 else 1.0)
  with pytest.raises(NonFiniteLossError, match="at step 17"):
    _train(run, executor)
  assert run.saved == []
