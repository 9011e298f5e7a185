"""Exports a workdir's newest checkpoint as a SavedModel for TensorFlow Serving.

  python scripts/export.py --workdir=W --export_dir=E [--score_rows=256]

Writes E/<version>/ (1, 2, ...: a new version per export, an existing one is never touched),
with the signatures serving_default (score sentences), generate, step and embed on raw strings
(the contract: tfsys/serving/lm.py, tfsys/serving/vae.py and the README).

--score_rows fixes in the SavedModel how many sentences a scoring request computes at once:
a request of any size then needs the memory of that many (logits of score_rows × 64 positions
× vocabulary floats at a time: 131 MB for 256 rows of a 2,000-word vocabulary). A language
model's scores do not depend on it (up to float32 rounding); a sentence VAE draws its
importance samples per slice. Lower it for a large vocabulary.
"""
from tfsys import cli  # first: sets TensorFlow's log level

from absl import flags

from tfsys.serving import SCORE_ROWS, export

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "where the version directories go")
_SCORE_ROWS = flags.DEFINE_integer("score_rows", SCORE_ROWS, "sentences a scoring request "
                                   "computes at once: its memory, whatever its size")
flags.mark_flags_as_required(["workdir", "export_dir"])


def main(argv):
  del argv
  path, checkpoint = export(_WORKDIR.value, _EXPORT_DIR.value, _SCORE_ROWS.value)
  print(f"exported {checkpoint} to {path}")
  print(f"inspect: saved_model_cli show --dir {path} --all")


if __name__ == "__main__":
  cli.run(main)
