"""A training step as a dependency graph of part computations, costed from shapes alone.

A *part* is a colocation group (the TensorFlow whitepaper's colocation constraints, arXiv:1603.04467
§3.2.1): its variables, their optimizer slots and every op that reads or updates them, forward
and backward, at every time chunk, run on one device; a row-sharded table part (`shardable`)
may instead span several devices, each holding a slice of rows and doing that share of the work.
A *node* is one piece of a part's computation (a layer's forward over one chunk of the unrolled
time steps, say) with its FLOPs, the bytes it passes on, and the nodes it waits for. Splitting
the time loop into chunks is what makes pipelining layers over devices (the whitepaper's
Figure 8) visible to a simulation.

`lm_graph` builds the graph of models/lstm_lm.py's LanguageModel from its config and shapes, for
any vocabulary (the full One Billion Word one included): nothing is allocated. A test or another
model writes `Node`s and `PartCost`s by hand.
"""
import dataclasses

from tfsys.errors import UserError

FLOAT_BYTES = 4   # float32 parameters, activations and gradients
# What one sigmoid, tanh or exp of an element costs, in matmul FLOPs: 0.3-0.6 ns per element
# against ~100 GFLOP/s of matmul on one core of the 2-core machine of issue 16 (a [20, 800]
# tanh / sigmoid chain in a tf.function). Counted as 2 FLOPs, the LSTM's gates and the
# softmax's exponentials would look ~10% cheaper than they run.
TRANSCENDENTAL_FLOPS = 50


@dataclasses.dataclass(frozen=True)
class Node:
  name: str
  part: str
  flops: float          # floating-point operations (a multiply-add is 2)
  out_bytes: int        # what it passes to each node of another part that waits for it
  deps: tuple = ()      # names of the nodes it waits for
  ops: int = 1          # TensorFlow ops it stands for: each costs a device's launch_secs
  reduce: bool = False  # split by rows, each shard's output is a partial sum of the whole
                        # (a softmax's input gradient), not a slice of it (an embedding lookup)


@dataclasses.dataclass(frozen=True)
class PartCost:
  name: str
  param_bytes: int
  slot_bytes: int = 0
  activation_bytes: int = 0   # what the forward keeps for the backward, at its peak
  shardable: bool = False     # a row table (embedding, softmax): may be split by rows

  @property
  def total_bytes(self) -> int:
    return self.param_bytes + self.slot_bytes + self.activation_bytes

  @property
  def parameters(self) -> int:
    return self.param_bytes // FLOAT_BYTES


class StepGraph:
  """Nodes in a topological order (each after the nodes it waits for) and their parts."""

  def __init__(self, nodes, parts):
    self.nodes = list(nodes)
    self.parts = {p.name: p for p in (parts.values() if isinstance(parts, dict) else parts)}
    self.index = {}
    for i, n in enumerate(self.nodes):
      if n.name in self.index:
        raise ValueError(f"two nodes are named {n.name!r}")
      if n.part not in self.parts:
        raise ValueError(f"node {n.name!r} belongs to part {n.part!r}, which is not declared")
      for d in n.deps:
        if d not in self.index:
          raise ValueError(f"node {n.name!r} waits for {d!r}, which does not come before it "
                           "(nodes must be listed in a topological order)")
      self.index[n.name] = i
    self.deps = [tuple(self.index[d] for d in n.deps) for n in self.nodes]
    self.consumers = [[] for _ in self.nodes]
    for i, ds in enumerate(self.deps):
      for d in ds:
        self.consumers[d].append(i)

  def total_flops(self) -> float:
    return sum(n.flops for n in self.nodes)


def slots_per_param(optim_config) -> int:
  """Optimizer slots per parameter (tfsys/train/optim.py): SGD none (one with momentum), Adagrad
  its accumulator, Adam its two moments."""
  name = optim_config.name
  if name == "sgd":
    return 1 if optim_config.get("momentum", 0.0) else 0
  if name in ("adagrad", "adam"):
    return {"adagrad": 1, "adam": 2}[name]
  raise UserError(f"--config.optim.name must be sgd, adagrad or adam, got {name!r}")


def chunk_sizes(unroll: int, chunks: int) -> list:
  """`unroll` time steps in `chunks` nearly equal chunks, the longer ones first."""
  if not 1 <= chunks <= unroll:
    raise UserError(f"chunks must be between 1 and the unroll ({unroll}), got {chunks}")
  return [unroll // chunks + (1 if j < unroll % chunks else 0) for j in range(chunks)]


def lm_graph(model_config, vocab_size: int, batch: int, unroll: int, chunks: int = 1,
             slots_per_param: int = 1,  # pylint: disable=redefined-outer-name
             train: bool = True) -> StepGraph:
  """The step of models/lstm_lm.py's LanguageModel on one replica's batch [batch, unroll].

  Parts: `char_cnn` or `embedding`, `lstm0` ... `lstm{L-1}`, `softmax`. Nodes: the input part's
  forward (once per batch, as `embed_ids` runs it), each layer's forward per chunk of time steps
  (waiting for the layer below at that chunk and for its own previous chunk), the softmax and
  loss per chunk, then the backward in reverse (a layer's chunk waits for the layer above and for
  its own next chunk), starting once the whole loss is computed, and the input part's backward.
  A backward costs 2x its forward (a matmul's gradient is two matmuls of its size: for its
  input and for its weights). With train=False only the forward, with the full softmax, as
  evaluation runs it. Node names: `lstm1/fwd/3`, `softmax/bwd/0`, `char_cnn/fwd`.

  activation_bytes estimates what the forward keeps for the backward (float32):
    char_cnn   the char embeddings [N, L, d], every width's convolution [N, L-w+1, n_w], and per
               highway layer its input, both pre-activations and the gate [N, W] x 4
    embedding  the looked-up rows [B, T, D]
    lstm{k}    per step its input [B, D], the gates [B, 4U], c and tanh(c) [B, 2U], the
               unprojected h [B, U] (with a projection) and the output [B, P]
    softmax    its input [B*T, P], the logits (full [B*T, V]; sampled [B*T, S+1] and the S
               gathered rows [S, P])
  Evaluation keeps none of it: activation_bytes is then one chunk's output.
  The optimizer's update (a few element-wise ops per parameter) is not costed.
  """
  # (imported here: models/ loads TensorFlow, which a hand-written graph does not need)
  from models import lstm_lm  # pylint: disable=import-outside-toplevel
  c = model_config
  param_bytes, shardable = {}, set()
  for spec in lstm_lm.variable_specs(c, vocab_size):   # declared, not created
    count = 1
    for s in spec.shape:
      count *= int(s)
    param_bytes[spec.part] = param_bytes.get(spec.part, 0) + FLOAT_BYTES * count
    if spec.vocab_rows:
      shardable.add(spec.part)
  sizes = chunk_sizes(unroll, chunks)
  B, T, V = batch, unroll, vocab_size
  D, U = lstm_lm.input_dim(c), c.lstm_units
  P = c.projection or U
  S = c.num_samples if train and 0 < c.num_samples < V else 0   # 0: the full softmax
  f = FLOAT_BYTES
  nodes, acts = [], {}
  slots = slots_per_param if train else 0

  # ---- input part: once over the batch's B*T words (at most that many distinct ones) --------
  n_words = B * T
  if c.input == "char_cnn":
    inp = "char_cnn"
    L, d, W = c.max_word_length, c.char_dim, sum(c.cnn_filters)
    conv = sum(2 * n_words * (L - w + 1) * w * d * n for w, n in zip(c.cnn_widths, c.cnn_filters))
    conv_out = sum(n_words * (L - w + 1) * n for w, n in zip(c.cnn_widths, c.cnn_filters))
    highway = c.num_highway * (2 * 2 * n_words * W * W + (TRANSCENDENTAL_FLOPS + 6) * n_words * W)
    proj = 2 * n_words * W * c.input_projection if c.input_projection else 0
    in_flops = conv + (TRANSCENDENTAL_FLOPS + 2) * conv_out + highway + proj   # + tanh, max
    in_ops = 6 + 5 * len(c.cnn_widths) + 8 * c.num_highway + (1 if proj else 0)
    acts[inp] = f * (n_words * L * d + conv_out + 4 * c.num_highway * n_words * W)
  else:
    inp = "embedding"
    in_flops, in_ops = n_words * D, 1   # a gather: memory traffic, one "flop" per element
    acts[inp] = f * n_words * D
  nodes.append(Node(f"{inp}/fwd", inp, in_flops, f * B * T * D, (), in_ops))

  # ---- LSTM layers and the softmax, per chunk -----------------------------------------------
  def lstm_flops(k, t):
    dim = D if k == 0 else P
    return (2 * B * t * dim * 4 * U + 2 * B * t * P * 4 * U
            + (2 * B * t * U * P if c.projection else 0)
            + (5 * TRANSCENDENTAL_FLOPS + 8) * B * t * U)   # + 3 sigmoids, 2 tanh, products

  def lstm_ops(t):
    return 3 + t * (13 + (1 if c.projection else 0) + (1 if c.cell_clip else 0))

  def softmax_flops(t):
    n = B * t
    if S:   # true logits, sampled logits and the gathers (the negatives shared by the batch)
      return (2 * n * P * (S + 1) + (TRANSCENDENTAL_FLOPS + 4) * n * (S + 1)
              + (S * P) * t / T + n * P)
    return 2 * n * P * V + (TRANSCENDENTAL_FLOPS + 4) * n * V   # + exp, max, sum, divide

  softmax_ops = 25 if S else 6
  for k in range(c.num_layers):
    dim = D if k == 0 else P
    acts[f"lstm{k}"] = f * B * T * (dim + 4 * U + 2 * U + (U if c.projection else 0) + P)
  acts["softmax"] = f * (B * T * P + (B * T * (S + 1) + S * P if S else B * T * V))

  top = c.num_layers - 1
  for j, t in enumerate(sizes):
    for k in range(c.num_layers):
      deps = [f"{inp}/fwd" if k == 0 else f"lstm{k - 1}/fwd/{j}"]
      if j:
        deps.append(f"lstm{k}/fwd/{j - 1}")
      nodes.append(Node(f"lstm{k}/fwd/{j}", f"lstm{k}", lstm_flops(k, t), f * B * t * P,
                        tuple(deps), lstm_ops(t)))
    nodes.append(Node(f"softmax/fwd/{j}", "softmax", softmax_flops(t), f,
                      (f"lstm{top}/fwd/{j}",), softmax_ops))

  if train:
    last = f"softmax/fwd/{len(sizes) - 1}"
    for j in reversed(range(len(sizes))):
      t = sizes[j]
      deps = (f"softmax/fwd/{j}",) + ((last,) if j != len(sizes) - 1 else ())
      nodes.append(Node(f"softmax/bwd/{j}", "softmax", 2 * softmax_flops(t), f * B * t * P,
                        deps, 2 * softmax_ops, reduce=True))
      for k in reversed(range(c.num_layers)):
        dim = D if k == 0 else P
        deps = [f"softmax/bwd/{j}" if k == top else f"lstm{k + 1}/bwd/{j}", f"lstm{k}/fwd/{j}"]
        if j + 1 < len(sizes):
          deps.append(f"lstm{k}/bwd/{j + 1}")
        nodes.append(Node(f"lstm{k}/bwd/{j}", f"lstm{k}", 2 * lstm_flops(k, t),
                          f * B * t * dim, tuple(deps), 2 * lstm_ops(t)))
    nodes.append(Node(f"{inp}/bwd", inp, 2 * in_flops, 0,
                      tuple(f"lstm0/bwd/{j}" for j in range(len(sizes))) + (f"{inp}/fwd",),
                      2 * in_ops + 2))
  else:
    acts = {p: f * B * sizes[0] * (D if p == inp else P) for p in acts}

  parts = [PartCost(p, param_bytes[p], slots * param_bytes[p], acts[p], p in shardable)
           for p in lstm_lm.parts(c)]
  return StepGraph(nodes, parts)


def config_graph(config, vocab_size: int, chunks: int = 1, replicas: int = 1) -> StepGraph:
  """lm_graph of a whole experiment config: one replica's share of train.batch_size rows,
  train.unroll steps, the slots of config.optim."""
  return lm_graph(config.model, vocab_size, max(config.train.batch_size // replicas, 1),
                  config.train.unroll, chunks, slots_per_param(config.optim))
