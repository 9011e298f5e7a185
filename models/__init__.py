"""Reference models. `build(model_config, vocab_words, seed)` makes the one a config names."""
from tfsys.errors import UserError


def build(model_config, vocab_words, seed: int = 0):
  if model_config.name == "lstm_lm":
    from models.lstm_lm import LanguageModel
    return LanguageModel(model_config, vocab_words, seed=seed)
  raise UserError(f"unknown model {model_config.name!r} (--config.model.name); known: lstm_lm")
