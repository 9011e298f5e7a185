"""Reference models. `build(model_config, vocab_words, seed)` makes the one a config names."""
from tfsys.errors import UserError

MODELS = ("lstm_lm", "sentence_vae")


def build(model_config, vocab_words, seed: int = 0):
  if model_config.name == "lstm_lm":
    from models.lstm_lm import LanguageModel
    return LanguageModel(model_config, vocab_words, seed=seed)
  if model_config.name == "sentence_vae":
    from models.sentence_vae import SentenceVAE
    return SentenceVAE(model_config, vocab_words, seed=seed)
  raise UserError(f"unknown model {model_config.name!r} (--config.model.name); known: "
                  f"{', '.join(MODELS)}")


def data_layout(model_config) -> str:
  """How the model reads data: 'stream' (token windows, state carried) or 'sentences'."""
  if model_config.name == "sentence_vae":
    return "sentences"
  if model_config.name == "lstm_lm":
    return "stream"
  build(model_config, [])   # raises the unknown-model error
