"""LSTM language models of Jozefowicz et al. 2016 ("Exploring the Limits of Language Modeling").

Inputs are either a character CNN over each word's bytes (§3.3, "CNN inputs") or a word
embedding table (the LSTM-N-M baselines of Table 1). Then a stack of LSTMs with projection and
dropout on the non-recurrent connections (Zaremba et al. 2014), and a softmax over the
vocabulary: sampled (§3.1, `num_samples` negatives from the log-uniform Zipfian sampler, which
assumes ids sorted by frequency as `tfsys.data.Vocabulary` makes them) for training, full for
evaluation and generation. The dropout masks and the negatives are functions of (seed, step,
replica) (models/layers/stateless.py), so a run resumed from a checkpoint trains exactly as
one that was never stopped.

The class satisfies models/interface.py's StreamModel (tests/models/test_interface.py checks
it): the state is a tuple of (c, h) per layer; scalars adds none (the loss says it all).
"""
import numpy as np
import tensorflow as tf

from models.layers import stateless
from models.layers.char_cnn import HIGHWAY_GATE_BIAS, char_cnn, char_cnn_shapes
from models.layers.lstm import FORGET_BIAS, lstmp_layer, lstmp_shapes
from models.layers.softmax import sampled_softmax_loss, sparse_softmax_cross_entropy
from models import sharded
from models.interface import traced_as_written
from models.variables import VariableSpec, WholeVariables, constant, create_all, uniform
from tfsys.data import chars


def input_dim(config) -> int:
  if config.input == "word":
    return config.word_dim
  return config.input_projection or sum(config.cnn_filters)


def variable_shapes(config, vocab_size: int) -> dict:
  """Every trainable variable's shape, from the config alone (parameter counts, tests)."""
  if config.input == "char_cnn":
    shapes = char_cnn_shapes(config.char_dim, config.cnn_widths, config.cnn_filters,
                             config.num_highway, config.input_projection)
  elif config.input == "word":
    shapes = {"word_embedding": [vocab_size, config.word_dim]}
  else:
    raise ValueError(f"model.input must be 'char_cnn' or 'word', not {config.input!r}")
  dim = input_dim(config)
  for layer in range(config.num_layers):
    for name, shape in lstmp_shapes(dim, config.lstm_units, config.projection).items():
      shapes[f"lstm{layer}_{name}"] = shape
    dim = config.projection or config.lstm_units
  shapes["softmax_w"] = [vocab_size, dim]   # [V, P]: the layout sampled_softmax_loss takes
  shapes["softmax_b"] = [vocab_size]
  return shapes


# Random sites (models/layers/stateless.py): dropout before LSTM layer k is site k, after the
# top layer site num_layers; the sampled softmax's negatives the last site.
SAMPLED_SOFTMAX_SITE = stateless.NUM_SITES - 1


def variable_specs(config, vocab_size: int, seed: int = 0) -> list:
  """The model's variables as declared (models/variables.py), in name order: highway gate
  biases start at HIGHWAY_GATE_BIAS, other biases at 0, matrices U(-init_scale, init_scale).
  The word embedding is a table; so is the softmax when it is trained with sampled negatives
  (then a batch touches its targets' rows and the samples', not all of them)."""
  sampled = 0 < config.num_samples < vocab_size
  specs = []
  for k, (name, shape) in enumerate(sorted(variable_shapes(config, vocab_size).items())):
    if name.endswith("_b_t"):
      value = constant(shape, HIGHWAY_GATE_BIAS)
    elif len(shape) == 1 or name.endswith(("_b", "_b_h")):
      value = constant(shape)
    else:
      value = uniform(shape, config.init_scale, seed * 1000 + k)
    if name == "word_embedding":
      touched = dict(table=True, rows_per_token=1)
    elif name in ("softmax_w", "softmax_b") and sampled:
      touched = dict(table=True, rows_per_token=1, rows_per_batch=config.num_samples)
    else:
      touched = {}
    vocab_rows = name in ("word_embedding", "softmax_w", "softmax_b")
    specs.append(VariableSpec(name, tuple(shape), value, part=part_of(name),
                              vocab_rows=vocab_rows, **touched))
  return specs


def part_of(name: str) -> str:
  """The part a variable belongs to (placement rules name parts): char_cnn or embedding, lstm0,
  lstm1, ..., softmax."""
  if name == "word_embedding":
    return "embedding"
  if name.startswith("lstm"):
    return name.split("_")[0]
  if name.startswith("softmax"):
    return "softmax"
  return "char_cnn"


def parts(config) -> list:
  """The model's parts, input to output."""
  first = "embedding" if config.input == "word" else "char_cnn"
  return [first] + [f"lstm{k}" for k in range(config.num_layers)] + ["softmax"]


def num_parameters(config, vocab_size: int) -> int:
  return sum(int(np.prod(s)) for s in variable_shapes(config, vocab_size).values())


@traced_as_written
class LanguageModel(tf.Module):
  """A stateful LSTM LM over word ids; char-CNN models also embed any word from its bytes."""

  # Training steps' matmuls in this dtype (tf.bfloat16: train.precision; the variables, the
  # gates, the state and the loss stay float32). Evaluation and exports compute in float32.
  compute_dtype = tf.float32
  variable_shapes = staticmethod(variable_shapes)   # models/interface.py: from the config alone
  variable_specs = staticmethod(variable_specs)
  parts = staticmethod(parts)

  def __init__(self, config, vocab_words, seed: int = 0, name: str = "lstm_lm",
               placement=None):
    super().__init__(name=name)
    if config.num_layers >= SAMPLED_SOFTMAX_SITE:
      raise ValueError(f"at most {SAMPLED_SOFTMAX_SITE - 1} layers, got {config.num_layers}")
    self.config = config
    self.seed = seed   # with the step and the replica, the seed of every training-time draw
    self.vocab_size = len(vocab_words)
    self.state_dim = config.projection or config.lstm_units
    # Where each part's variables live and its computation runs (models/variables.py).
    self.placement = placement or WholeVariables()
    self.params = create_all(variable_specs(config, self.vocab_size, seed), self.placement)
    if config.input == "char_cnn":
      # The vocabulary's words as bytes: a constant table, not a trainable parameter; kept as a
      # variable so the checkpoint and SavedModel carry it with the weights.
      self.word_chars = tf.Variable(chars.encode_words(vocab_words, config.max_word_length),
                                    trainable=False, name="word_chars")

  # ---- inputs ------------------------------------------------------------------------------
  def embed_chars(self, char_ids):
    """Char ids [N, L] -> word vectors [N, D]: works for words outside the vocabulary."""
    c = self.config
    return self.placement.run("char_cnn", lambda ids: char_cnn(
        ids, self.params, c.cnn_widths, c.num_highway, c.cnn_activation,
        c.highway_activation, zero_pad=c.get("zero_pad_chars", False)), char_ids)

  def embed_ids(self, ids):
    """Word ids [B, T] -> [B, T, D]. The char CNN runs once per distinct word of the batch."""
    if self.config.input == "word":
      return self.placement.run(
          "embedding", lambda ids: sharded.gather(self.params["word_embedding"], ids), ids)
    unique, index = tf.unique(tf.reshape(ids, [-1]))
    vectors = self.embed_chars(tf.gather(self.word_chars, unique))
    flat = tf.gather(vectors, index)
    return tf.reshape(flat, tf.concat([tf.shape(ids), [tf.shape(vectors)[-1]]], 0))

  def embed_words(self, words, word_ids):
    """Words string [N] -> vectors [N, D]. A char-CNN model embeds each word from its bytes, so
    a word outside the vocabulary gets its own vector (Jozefowicz §3.3); a word-input model
    looks up word_ids(words), the ids (<unk>'s for unknown words), called only then."""
    if self.config.input == "char_cnn":
      return self.embed_chars(chars.encode_words_tf(words, self.config.max_word_length))
    return self.embed_ids(word_ids(words))

  # ---- recurrence --------------------------------------------------------------------------
  def initial_state(self, batch_size):
    zeros_c = tf.zeros([batch_size, self.config.lstm_units])
    zeros_h = tf.zeros([batch_size, self.state_dim])
    return tuple((zeros_c, zeros_h) for _ in range(self.config.num_layers))

  def hidden(self, x, state, training: bool, seed=None):
    """Embedded inputs [B, T, D] -> top LSTM outputs [B, T, P] and the new state.

    seed: the step's seed (stateless.step_seed), for the dropout masks in training; by default
    step 0's on this replica.
    """
    pieces, state = self._hidden_pieces(x, state, training, seed)
    return (pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=1)), state

  def _hidden_pieces(self, x, state, training: bool, seed=None):
    """hidden() as a list of the top layer's outputs per chunk of time steps.

    A placement may cut the T steps into chunks (placement.chunks; 1 by default): layer k runs
    chunk j once layer k-1 has run it and layer k has run chunk j-1, so that layers placed on
    different devices work at once on different chunks: the pipelining of the TensorFlow
    whitepaper's Figure 8. The dropout masks are drawn for the whole [B, T, D] and cut alike, so
    a chunked step draws what an unchunked one does.
    """
    c = self.config
    if training and seed is None:
      seed = stateless.step_seed(self.seed, 0)
    rate = c.dropout if training else 0.0
    dtype = self.compute_dtype if training else tf.float32
    # Workdirs written before these keys existed trained with their defaults.
    forget_bias = c.get("forget_bias", FORGET_BIAS)
    chunks = self.placement.chunks
    steps = x.shape[1]
    if chunks > 1 and (steps is None or steps < chunks):
      chunks = 1   # (a request of unknown or fewer steps runs whole)
    if chunks > 1:
      sizes = [steps // chunks + (1 if j < steps % chunks else 0) for j in range(chunks)]
      pieces = tf.split(x, sizes, axis=1)
    else:
      pieces = [x]

    def mask(k, dim, rate):   # site k's dropout mask [B, T, dim], cut into the chunks
      if chunks == 1 or not rate:
        return [None] * chunks
      ones = tf.ones(tf.stack([tf.shape(x)[0], steps, dim]))
      return tf.split(stateless.dropout(ones, rate, stateless.site_seed(seed, k)), sizes, 1)

    state = list(state)
    for layer in range(c.num_layers):
      # Kim et al. §4: no dropout on the highway-to-LSTM connection; Zaremba et al. drop the
      # word embeddings too. `embedding_dropout` chooses.
      layer_rate = (c.embedding_dropout if training else 0.0) if layer == 0 else rate
      params = {k: self.params[f"lstm{layer}_{k}"] for k in ("w_x", "w_h", "b", "w_p")
                if f"lstm{layer}_{k}" in self.params}
      top = layer == c.num_layers - 1
      masks_in = mask(layer, int(params["w_x"].shape[0]), layer_rate)
      masks_out = mask(c.num_layers, self.state_dim, rate if top else 0.0)
      for j in range(chunks):
        def run_layer(x, s, layer=layer, layer_rate=layer_rate, params=params, top=top,
                      mask_in=masks_in[j], mask_out=masks_out[j]):
          if layer_rate:
            x = (x * tf.cast(mask_in, x.dtype) if mask_in is not None
                 else stateless.dropout(x, layer_rate, stateless.site_seed(seed, layer)))
          x, s = lstmp_layer(x, s, params, c.cell_clip, forget_bias, dtype, backward=training)
          if top and rate:   # the dropout before the softmax
            x = (x * tf.cast(mask_out, x.dtype) if mask_out is not None
                 else stateless.dropout(x, rate, stateless.site_seed(seed, c.num_layers)))
          return x, s
        pieces[j], state[layer] = self.placement.run(f"lstm{layer}", run_layer, pieces[j],
                                                     state[layer])
    return pieces, tuple(state)

  # ---- outputs -----------------------------------------------------------------------------
  def output_logits(self, h):
    """Top LSTM outputs [B, T, P] -> full-softmax logits [B, T, V] (scoring in chunks of T)."""
    w, b = self.params["softmax_w"], self.params["softmax_b"]

    def output(h):
      if not isinstance(w, sharded.ShardedTable):
        return tf.einsum("btp,vp->btv", h, w) + b
      flat = sharded.logits(tf.reshape(h, [-1, tf.shape(h)[-1]]), w, b)
      return tf.reshape(flat, tf.concat([tf.shape(h)[:-1], [tf.shape(flat)[-1]]], 0))
    return self.placement.run("softmax", output, h)

  def logits(self, inputs, state):
    """Full-softmax logits [B, T, V] for word ids [B, T] (evaluation, sampling)."""
    h, state = self.hidden(self.embed_ids(inputs), state, training=False)
    return self.output_logits(h), state

  def loss(self, batch, state, training: bool, step=0, replica=None):
    """Mean per-token loss over the batch's weighted tokens.

    Training with num_samples > 0 uses the sampled softmax (its loss is then an estimate, not
    the NLL); evaluation always uses the full softmax. metrics['nll_sum'] and
    metrics['num_tokens'] let callers aggregate exact perplexities across batches and replicas.

    In training the dropout masks and the sampled negatives are a function of (self.seed, step,
    replica): step is the global step (an int, a scalar tensor or the step variable), replica
    this replica's index (default: its id in the tf.distribute replica context, else 0; a
    parameter-server worker passes its task index).
    """
    seed = stateless.step_seed(self.seed, step, replica) if training else None
    pieces, state = self._hidden_pieces(self.embed_ids(batch["inputs"]), state, training, seed)
    n = self.config.num_samples
    if len(pieces) > 1 and training and 0 < n < self.vocab_size:
      pieces = [tf.concat(pieces, axis=1)]   # one set of sampled negatives for the whole batch
    # Chunked, the full softmax runs chunk by chunk, pipelined after the layers.
    cut = ((lambda t: tf.split(t, [int(p.shape[1]) for p in pieces], axis=1))
           if len(pieces) > 1 else (lambda t: [t]))
    token_loss = tf.concat([self._softmax_loss(h, t, training, seed)
                            for h, t in zip(pieces, cut(batch["targets"]))], axis=0)
    weights = tf.concat([tf.reshape(w, [-1]) for w in cut(batch["weights"])], axis=0)
    nll_sum = tf.reduce_sum(token_loss * weights)
    num_tokens = tf.reduce_sum(weights)
    mean = nll_sum / tf.maximum(num_tokens, 1.0)
    return mean, {"nll_sum": nll_sum, "num_tokens": num_tokens}, state

  def _softmax_loss(self, h, targets, training, seed):
    """Per-token losses [B·T] of top outputs h [B, T, P] for targets [B, T] (the softmax part)."""
    flat_h = tf.reshape(h, [-1, tf.shape(h)[-1]])
    targets = tf.reshape(targets, [-1])
    n = self.config.num_samples
    w, b = self.params["softmax_w"], self.params["softmax_b"]

    def softmax_loss(flat_h, targets):
      if training and 0 < n < self.vocab_size:
        flat_h = tf.cast(flat_h, tf.float32)   # (its matmul casts to the compute dtype)
        labels = tf.cast(targets[:, None], tf.int64)
        # A sharded table is gathered from shard by shard ("div" partitioning).
        return sampled_softmax_loss(
            w, b, labels[:, 0], flat_h, gather=sharded.gather, compute_dtype=self.compute_dtype,
            sampled_values=stateless.log_uniform_candidates(
                labels, n, self.vocab_size, stateless.site_seed(seed, SAMPLED_SOFTMAX_SITE)))
      logits = sharded.logits(flat_h, w, b)   # float32 whatever flat_h's dtype
      return sparse_softmax_cross_entropy(targets, logits)
    return self.placement.run("softmax", softmax_loss, flat_h, targets)

  def scalars(self, sums: dict, step: int) -> dict:
    del sums, step
    return {}
