"""Exports a workdir's newest checkpoint as a SavedModel for TensorFlow Serving.

  python scripts/export.py --workdir=W --export_dir=E

Writes E/<version>/ (1, 2, ...: a new version per export, an existing one is never touched),
with the signatures serving_default (score sentences), generate, step and embed on raw strings
(the contract: tfsys/export.py and the README).
"""
from tfsys import cli  # first: sets TensorFlow's log level

from absl import flags

from tfsys.export import export

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "where the version directories go")
flags.mark_flags_as_required(["workdir", "export_dir"])


def main(argv):
  del argv
  path, checkpoint = export(_WORKDIR.value, _EXPORT_DIR.value)
  print(f"exported {checkpoint} to {path}")
  print(f"inspect: saved_model_cli show --dir {path} --all")


if __name__ == "__main__":
  cli.run(main)
