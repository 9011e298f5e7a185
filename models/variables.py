"""Declared variables: a model says what variables it needs; a placement creates them.

A model lists `VariableSpec`s (name, shape, dtype, initial value, and whether the variable is a
row-gathered table: an embedding, or a softmax trained with sampled negatives) and receives the
variables from a placement object. The placement decides where they live; the model only uses
them. Three placements exist (after flax's logical partitioning and big_vision's rule lists,
in the spirit of DESIGN.md §9):

  WholeVariables   each variable whole, wherever the scope it is created in puts it (the
                   all-reduce backends create the model under their strategy's scope, which
                   mirrors it over the replicas)
  ServerPlacement  the parameter-server backends: a whole working copy in each client, and the
                   stores of their state on the ps tasks (`store`: the tables split by rows over
                   them, each piece a variable of its own, the rest as tfsys/distribute/ps.py
                   lays them out)
  DevicePlacement  placement rules or the auto placer (tfsys/placement): each part of the model
                   (a spec's `part`) on its devices, variables and computation, forward and
                   backward (`run`); a part's vocabulary tables may be split by rows over several
                   devices (models/sharded.py)

Nothing is allocated to describe a model: `variable_specs(config, vocab_size)` works for a
billion-word configuration on any machine (the initial values are made only by `create`).
"""
import dataclasses
from typing import Callable, Protocol

import tensorflow as tf

from models.sharded import ShardedTable, on_device


@dataclasses.dataclass(frozen=True)
class VariableSpec:
  """One variable a model needs."""
  name: str
  shape: tuple
  initial_value: Callable[[], tf.Tensor]   # called once, by the placement
  dtype: tf.DType = tf.float32
  table: bool = False       # rows are gathered: gradients are rows, it may be split by rows
  part: str = ""            # the part of the model it belongs to (placement rules name parts)
  vocab_rows: bool = False  # its rows are the vocabulary's: a placement may split it by rows
  rows_per_token: int = 0   # a table's rows one batch touches: at most this many per token...
  rows_per_batch: int = 0   # ...plus this many (the sampled negatives)

  def touched_rows(self, tokens: int) -> int:
    """At most how many of a table's rows a batch of `tokens` tokens touches."""
    return min(self.shape[0], tokens * self.rows_per_token + self.rows_per_batch)


class Placement(Protocol):
  def create(self, spec: VariableSpec) -> tf.Variable: ...   # the variable spec declares
  def run(self, part: str, fn, *args): ...   # fn(*args), forward and backward on part's devices


class WholeVariables:
  """Each variable whole, in the current device and strategy scope."""
  chunks = 1   # time steps are not cut into chunks (DevicePlacement: pipelining)

  def __init__(self):
    self.specs = {}   # variable ref -> its spec

  def create(self, spec: VariableSpec) -> tf.Variable:
    v = tf.Variable(spec.initial_value(), name=spec.name, dtype=spec.dtype)
    self.specs[v.ref()] = spec
    return v

  def spec_of(self, variable) -> VariableSpec:
    return self.specs[variable.ref()]

  def tables(self, variables) -> list[bool]:
    """Which of `variables` are row-gathered tables (in their order)."""
    return [self.spec_of(v).table for v in variables]

  def run(self, part: str, fn, *args):
    del part   # everything where the scope puts it
    return fn(*args)


class DevicePlacement(WholeVariables):
  """Each part's variables and computation (forward and backward) on the devices that
  `assignment` gives it (tfsys/placement: from rules or the auto placer): one device, or
  several over which the part's vocabulary tables are split by rows (models/sharded.py; the
  part's other variables and computation stay on the first). `host` prefixes the devices'
  names ("/job:worker/replica:0/task:1" under multi_worker; "" in one process), so that the
  same assignment places every worker's replica on its own devices."""

  def __init__(self, assignment: dict, host: str = "", chunks: int = 1):
    super().__init__()
    self.assignment, self.host, self.chunks = dict(assignment), host, chunks

  def devices(self, part: str) -> list:
    if part not in self.assignment:
      raise KeyError(f"no placement for part {part!r} (placed: {sorted(self.assignment)})")
    return [f"{self.host}/device:{d}" for d in self.assignment[part]]

  def create(self, spec: VariableSpec):
    devices = self.devices(spec.part)
    if len(devices) > 1 and spec.vocab_rows:
      table = ShardedTable.create(spec.name, spec.initial_value, devices, spec.dtype)
      for v in table.shards:
        self.specs[v.ref()] = spec
      return table
    with tf.device(devices[0]):
      return super().create(spec)

  def run(self, part: str, fn, *args):
    return on_device(self.devices(part)[0], fn, *args, name=part)


class ServerPlacement(DevicePlacement):
  """A parameter-server client's: its working copies are whole variables here, and `store`
  places the state they are a copy of on the ps tasks: the tables split by rows, the rest as
  tfsys/distribute/ps.py's Layout says. Every client makes the same stores by name.

  With an `assignment` (placement rules), each part's working copies and computation go to its
  device of this client's host, as DevicePlacement places them; the tables are already split
  over the ps tasks, so a part gets one device here."""

  def __init__(self, ps_devices, min_shard_rows: int, assignment=None, host: str = ""):
    super().__init__(assignment or {}, host)
    self.ps_devices, self.min_shard_rows = ps_devices, min_shard_rows
    self.placed = assignment is not None

  def create(self, spec: VariableSpec):
    return super().create(spec) if self.placed else WholeVariables.create(self, spec)

  def run(self, part: str, fn, *args):
    return super().run(part, fn, *args) if self.placed else fn(*args)

  def store(self, name: str, variables, like=None):
    """A ShardedStore of `variables` on the ps tasks, placed as the model's variables `like`
    (default: themselves) are: an optimizer's slots go where their variables go."""
    from tfsys.distribute.ps import ShardedStore   # (models/ needs tfsys only here)
    return ShardedStore(name, variables, self.ps_devices, self.min_shard_rows,
                        self.tables(like if like is not None else variables))



def parameters(module: tf.Module) -> list:
  """A model's trainable parameters: variables and sharded tables (models/sharded.py), in the
  order tf.Module lists its trainable variables (an unsplit model gives exactly those)."""
  return list(module._flatten(predicate=lambda x: isinstance(x, ShardedTable) and x.trainable
                              or isinstance(x, tf.Variable) and x.trainable))


def create_all(specs, placement=None) -> dict:
  """{name: variable} for specs, created by placement (default: whole variables)."""
  placement = placement or WholeVariables()
  return {spec.name: placement.create(spec) for spec in specs}


def uniform(shape, scale: float, seed: int):
  """The initial value of a weight matrix: U(-scale, scale), drawn from seed when created."""
  return lambda: tf.random_uniform_initializer(-scale, scale, seed=seed)(shape)


def constant(shape, value: float = 0.0):
  return lambda: tf.fill(shape, value)
