"""tfsys: a TensorFlow 2 system for training language models across many machines."""

__version__ = "0.1.0"
