"""The model kinds: what a config's `model.name` means, in the one place that says it.

A kind names its model class (a tf.Module satisfying `interface`, models/interface.py), its task
(tfsys/train/tasks.py: the training stream, evaluation and samples for the model's data), and
its serving module (tfsys/serving/: the SavedModel's signatures). Everything else asks here (or
the task or server it names) and never compares names: a new model is one entry below, a class
for each column, and a config.

Classes are written 'module:Class' and imported when first asked for: the tasks and the servers
live in tfsys, which imports models, and a language model's run need not import the VAE's
TensorFlow Probability.
"""
import dataclasses
import importlib

from tfsys.errors import UserError


@dataclasses.dataclass(frozen=True)
class Kind:
  """One model kind: a name and the classes that build, train and serve it."""

  name: str         # config.model.name
  model: str        # the tf.Module built from config.model (models/)
  interface: str    # the protocol the model satisfies (models/interface.py)
  task: str         # its data, evaluation and samples (tfsys/train/tasks.py)
  server: str       # its serving module's class: the SavedModel contract (tfsys/serving/)

  def model_class(self):
    return _load(self.model)

  def interface_class(self):
    return _load(self.interface)

  def task_class(self):
    return _load(self.task)

  def server_class(self):
    return _load(self.server)


KINDS = {kind.name: kind for kind in (
    Kind("lstm_lm", model="models.lstm_lm:LanguageModel",
         interface="models.interface:StreamModel",
         task="tfsys.train.tasks:StreamTask", server="tfsys.serving.lm:LanguageModelServer"),
    Kind("sentence_vae", model="models.sentence_vae:SentenceVAE",
         interface="models.interface:SentenceModel",
         task="tfsys.train.tasks:SentenceTask", server="tfsys.serving.vae:SentenceVAEServer"),
)}
MODELS = tuple(KINDS)


def _load(path: str):
  module, name = path.split(":")
  return getattr(importlib.import_module(module), name)


def kind(model_config) -> Kind:
  """The kind a config's model section names (a UserError naming the flag if none)."""
  name = model_config.name
  if name not in KINDS:
    raise UserError(f"unknown model {name!r} (--config.model.name); known: {', '.join(MODELS)}")
  return KINDS[name]


def kind_of(model) -> Kind:
  """The kind of a built model, from its class (or a class it derives from): by the registry's
  own 'module:Class' names, so no other kind's module is imported."""
  for cls in type(model).__mro__:
    for k in KINDS.values():
      if k.model == f"{cls.__module__}:{cls.__qualname__}":
        return k
  raise ValueError(f"{type(model).__name__} is no registered model kind (models/registry.py)")


def build(model_config, vocab_words, seed: int = 0, placement=None):
  """The model config.model names, over the vocabulary's words, its weights drawn from seed and
  its variables created by placement (models/variables.py; default: whole variables)."""
  return kind(model_config).model_class()(model_config, vocab_words, seed=seed,
                                          placement=placement)


def variable_specs(model_config, vocab_size: int, seed: int = 0) -> list:
  """The model's declared variables (models/variables.py), from the config alone."""
  return kind(model_config).model_class().variable_specs(model_config, vocab_size, seed)


def variable_shapes(model_config, vocab_size: int) -> dict:
  """{name: shape} of the model's trainable variables, from the config alone (no allocation)."""
  return kind(model_config).model_class().variable_shapes(model_config, vocab_size)
