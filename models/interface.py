"""The model interface: what the code outside models/ calls on a model, one line a method.

A model is a tf.Module (its `trainable_variables` are what the optimizer updates and the
checkpoint saves). `Model` is what the one training loop, the parameter-server workers and the
checkpoints call on every model; `StreamModel` and `SentenceModel` add what the two tasks
(tfsys/train/tasks.py), their tools and their serving modules (tfsys/serving/) call. The
registry (models/registry.py) names, for each model kind, the refinement its class satisfies;
tests/models/test_interface.py checks every registered class against it, method by method and
parameter by parameter. Nothing outside models/ reads a model's variables by name: it goes
through these methods.

Batches are dicts of tensors: `inputs`, `targets` (word ids [B, T]) and `weights` (float [B, T]),
plus `reset` (stream windows) or `lengths` (whole sentences).
"""
import inspect
from typing import Protocol, runtime_checkable


@runtime_checkable
class Model(Protocol):
  """What the training loop, the parameter-server workers and the checkpoints call."""

  config: object   # the model's section of the experiment config (config.model)
  seed: int        # with (step, replica) the seed of every training-time draw (layers/stateless.py)
  vocab_size: int

  @staticmethod
  def variable_shapes(config, vocab_size): ...        # {name: shape}, from the config alone
  @staticmethod
  def variable_specs(config, vocab_size, seed=0): ...  # [VariableSpec] (models/variables.py)
  def initial_state(self, batch_size): ...            # the state carried into a batch; () if none
  def loss(self, batch, state, training, step=0, replica=None): ...  # (mean, metric sums, state)
  def scalars(self, sums, step): ...                  # summed train metrics -> extra train/ scalars


@runtime_checkable
class StreamModel(Model, Protocol):
  """A language model over a token stream, state carried (tfsys/train/tasks.py StreamTask,
  tfsys/train/evaluate.py, tfsys/serving/lm.py)."""

  def embed_ids(self, ids): ...                       # word ids [B, T] -> input vectors [B, T, D]
  def embed_words(self, words, word_ids): ...         # strings [N], their ids' function -> [N, D]
  def hidden(self, x, state, training, seed=None): ...  # [B, T, D] -> (top outputs, state)
  def output_logits(self, h): ...                     # top outputs [B, T, P] -> logits [B, T, V]
  def logits(self, inputs, state): ...                # word ids [B, T] -> (logits [B, T, V], state)


@runtime_checkable
class SentenceModel(Model, Protocol):
  """A model of whole sentences from a latent code z (tfsys/train/tasks.py SentenceTask,
  tfsys/train/sentence_tools.py, tfsys/serving/vae.py); latent_dim 0 is its RNNLM."""

  latent_dim: int  # the size D of z; 0: no code
  eos_id: int      # the sentence end: decoding starts after one and stops at one

  def encode(self, targets, lengths): ...             # ids [B, T], lengths [B] -> μ, log σ² [B, D]
  def decoder_state(self, z, batch): ...              # z [B, D] -> the decoder's initial state
  def decode_hidden(self, inputs, state, z, training, seed=None): ...  # -> (outputs, state)
  def reconstruction_nll(self, batch, z, training=False, seed=None): ...  # -log p(x|z) [B]
  def evaluate_batch(self, batch, num_samples, seed): ...  # per sentence: log p(x) bound, ELBO, KL
  def decode(self, z, state, first, max_words, temperature, seed): ...  # -> ids [B, L] to <eos>


def mismatches(cls, interface) -> list[str]:
  """What class `cls` lacks of `interface`: each method it does not have, or that takes other
  parameters (their names in order) than the interface's definition; [] if none. The data
  attributes are set by instances: isinstance() on a built model checks those."""
  problems = []
  for klass in reversed(interface.__mro__):
    if klass.__module__ != __name__:   # Protocol, Generic, object
      continue
    for name, member in vars(klass).items():
      if name.startswith("_") or not callable(getattr(member, "__func__", member)):
        continue
      if not hasattr(cls, name):
        problems.append(f"{cls.__name__} has no {name}{inspect.signature(member)}")
        continue
      want = list(inspect.signature(getattr(interface, name)).parameters)
      have = list(inspect.signature(getattr(cls, name)).parameters)
      if want != have:
        problems.append(f"{cls.__name__}.{name} takes ({', '.join(have)}), "
                        f"the interface ({', '.join(want)})")
  return problems


def traced_as_written(cls):
  """Class decorator: the model's methods run as written when a tf.function traces them, not
  converted by AutoGraph. Models are TensorFlow ops, with Python control flow only on the config
  and explicit tf.while_loop / tf.cond where a loop depends on tensors; converting their source
  is most of a trace's time (the char-CNN LM's training step: 3.8 s traced with AutoGraph,
  1.1 s without, the same graph), paid by every process that trains, evaluates or exports."""
  import tensorflow as tf   # pylint: disable=import-outside-toplevel
  for name, member in list(vars(cls).items()):
    if inspect.isfunction(member) and not name.startswith("__"):
      setattr(cls, name, tf.autograph.experimental.do_not_convert(member))
  return cls
