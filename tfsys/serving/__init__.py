"""SavedModels for inference, one serving contract per model kind, on raw strings.

  common.py  what the contracts share: the vocabulary in the graph, scoring in slices of
             score_rows sentences, the request checks, and `Server`, their base class
  lm.py      the language models' contract (serving_default, generate, step, embed)
  vae.py     the sentence VAE's and its RNNLM's (serving_default/score, encode, decode, sample,
             interpolate)

models/registry.py names each kind's server class. `export(workdir, export_dir)` writes the
newest checkpoint of a workdir to `export_dir/<version>/` (TensorFlow Serving's layout: a new
integer version per export, written under a temporary name and renamed when complete, never
over an existing one); the SavedModel needs TensorFlow alone. `load_signatures` and
`contract_of` are the client's side: which contract a SavedModel follows, read from its
signatures, so that the scripts use its classmethods (score_text, sample_text) alone.
"""
import os
import tempfile

import tensorflow as tf
from absl import logging as absl_logging

import models
from tfsys.errors import UserError
from tfsys.serving.common import SCORE_ROWS, Server, check_score_rows

__all__ = ["SCORE_ROWS", "Server", "contract_of", "export", "in_process_server",
           "load_signatures", "next_version"]


def next_version(export_dir: str) -> int:
  versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
  return max(versions, default=0) + 1


def in_process_server(model, vocab, tmp_dir: str, max_length: int = 0,
                      score_rows: int = SCORE_ROWS) -> Server:
  """The serving module of the model's kind over a model in memory (what export() saves), for
  the same scores. max_length: data.max_length, to which sentence models cut a sentence."""
  vocab_path = os.path.join(tmp_dir, "vocab.txt")
  with open(vocab_path, "w", encoding="utf-8") as f:
    f.write("".join(w + "\n" for w in vocab.words))
  return models.kind_of(model).server_class()(model, vocab, vocab_path, max_length, score_rows)


def export(workdir: str, export_dir: str, score_rows: int = SCORE_ROWS) -> tuple[str, str]:
  """Writes the workdir's newest checkpoint as export_dir/<next version>; returns that
  directory and the checkpoint it holds. score_rows: sentences per slice of a scoring request
  (its memory: tfsys/serving/lm.py's docstring)."""
  from tfsys.train.evaluate import load_trained
  check_score_rows(score_rows)   # before the minutes of loading a large model
  config, vocab, model, checkpoint = load_trained(workdir)
  try:
    os.makedirs(export_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the export directory {export_dir}: {e.strerror}") from None
  with tempfile.TemporaryDirectory(dir=export_dir, prefix=".tmp-") as tmp:
    server = in_process_server(model, vocab, tmp, config.data.get("max_length", 0), score_rows)
    staging = os.path.join(tmp, "model")
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # one INFO line per renamed graph input
    try:
      tf.saved_model.save(server, staging, signatures=server.signatures())
    finally:
      absl_logging.set_verbosity(verbosity)
    while True:
      target = os.path.join(export_dir, str(next_version(export_dir)))
      try:
        os.rename(staging, target)   # atomic: TF Serving never sees a half-written version
        break
      except OSError:   # another export took this version first: never overwrite it
        if not os.path.exists(target):
          raise
  return target, checkpoint


def load_signatures(saved_model_dir: str) -> dict:
  """The serving signatures of an exported model (scripts use only these with --saved_model)."""
  if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
    hint = ""
    if os.path.isdir(saved_model_dir) and next_version(saved_model_dir) > 1:
      hint = f" (it holds versions: give {saved_model_dir}/<version>)"
    raise UserError(f"no SavedModel in {saved_model_dir}{hint}")
  return tf.saved_model.load(saved_model_dir).signatures


def contract_of(signatures) -> type[Server]:
  """The server class whose contract a loaded SavedModel's signatures follow: each registered
  kind's server says whether they are its own (a SavedModel carries no config to ask)."""
  for kind in models.KINDS.values():
    server = kind.server_class()
    if server.follows(signatures):
      return server
  raise UserError(f"a SavedModel with the signatures {', '.join(sorted(signatures))} was not "
                  "written by scripts/export.py")
