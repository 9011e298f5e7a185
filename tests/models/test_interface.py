"""Every registered model kind: its classes import, its model satisfies its interface
(models/interface.py) method by method and parameter by parameter, and the registry is the one
place that maps a name to them."""
import glob
import importlib
import os

import pytest

import models
from models import interface
from models.lstm_lm import LanguageModel
from tfsys.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ["<unk>", "<eos>", "the", "company", "said", "it", "expects", "to", "report"]


def _smoke_config(name: str):
  """The :smoke variant of the first experiment in configs/ whose model is kind `name`."""
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    module = os.path.basename(path)[:-3]
    if module.startswith(("_", "common")):
      continue
    config = importlib.import_module(f"configs.{module}").get_config("smoke")
    if config.model.name == name:
      return config
  raise AssertionError(f"no config in configs/ trains a {name}")


@pytest.mark.parametrize("name", sorted(models.KINDS))
def test_a_registered_model_satisfies_its_interface(name):
  kind = models.KINDS[name]
  cls, protocol = kind.model_class(), kind.interface_class()
  assert interface.Model in protocol.__mro__
  assert interface.mismatches(cls, protocol) == []
  model = models.build(_smoke_config(name).model, WORDS, seed=1)
  assert isinstance(model, protocol) and isinstance(model, interface.Model)
  assert type(model) is cls and models.kind_of(model) is kind


@pytest.mark.parametrize("name", sorted(models.KINDS))
def test_a_kind_names_a_task_and_a_server_that_exist(name):
  from tfsys.serving.common import Server
  from tfsys.train.tasks import Task
  kind = models.KINDS[name]
  assert issubclass(kind.task_class(), Task)
  assert issubclass(kind.server_class(), Server)
  config = _smoke_config(name).model
  assert models.variable_shapes(config, len(WORDS)) == kind.model_class().variable_shapes(
      config, len(WORDS))


def test_the_check_finds_a_missing_method_and_renamed_parameters():
  without = type("WithoutOutputLogits", (), {k: v for k, v in vars(LanguageModel).items()
                                             if k != "output_logits"})
  assert interface.mismatches(without, interface.StreamModel) == [
      "WithoutOutputLogits has no output_logits(self, h)"]

  class Renamed(LanguageModel):
    def loss(self, batch, state, train, step=0, replica=None):
      return super().loss(batch, state, train, step, replica)
  assert interface.mismatches(Renamed, interface.StreamModel) == [
      "Renamed.loss takes (self, batch, state, train, step, replica), "
      "the interface (self, batch, state, training, step, replica)"]
  # A language model is no sentence model: what scripts/vae.py refuses.
  assert interface.mismatches(LanguageModel, interface.SentenceModel)


def test_an_unknown_model_name_is_one_user_error():
  config = _smoke_config("lstm_lm").model
  config.name = "transformer"
  with pytest.raises(UserError, match=r"unknown model 'transformer' \(--config.model.name\); "
                                      r"known: lstm_lm, sentence_vae"):
    models.build(config, WORDS)
