"""Reference models. `build(model_config, vocab_words, seed)` makes the one a config names; the
kinds, and the task and serving module of each, are in models/registry.py; what every model
offers the code outside models/ is models/interface.py."""
from models.registry import KINDS, MODELS, build, kind, kind_of, variable_shapes, variable_specs

__all__ = ["KINDS", "MODELS", "build", "kind", "kind_of", "variable_shapes", "variable_specs"]
