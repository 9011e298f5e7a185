"""Perplexity of a workdir's newest checkpoint, or of an exported SavedModel.

  python scripts/evaluate.py --workdir=W [--split=valid|test | --text_file=F [--per_sentence]]
  python scripts/evaluate.py --saved_model=E/<version> --text_file=F

A text file is read like the corpora: one tokenised sentence per line, words split on
whitespace, a sentence end after each line, words outside the vocabulary scored as <unk>.
By default the text is one stream laid out in eval.batch_size rows, the state carried from
sentence to sentence (the corpora's convention). --per_sentence scores every line on its own
from a zero state after a sentence end, as the SavedModel's serving_default signature does;
--saved_model always does, using only the SavedModel.

A sentence model (configs/ptb_vae.py, configs/ptb_rnnlm.py) always reads whole sentences (so
--per_sentence changes nothing) and prints its importance-weighted bound (per word as
perplexity, per sentence as NLL), the ELBO and its terms, active units and mutual information;
through a SavedModel, the bound alone. What is evaluated how is the model's task's business
(tfsys/train/tasks.py), and through a SavedModel its serving module's (tfsys/serving/).
"""
from tfsys import cli  # first: sets TensorFlow's log level

import os

from absl import flags

from tfsys.data import make_corpus
from tfsys.data.corpus import read_sentences
from tfsys.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "an exported version directory E/<n>")
_SPLIT = flags.DEFINE_enum("split", "test", ["valid", "test"], "corpus split to evaluate")
_TEXT = flags.DEFINE_string("text_file", None, "evaluate this file instead of a corpus split")
_PER_SENTENCE = flags.DEFINE_bool("per_sentence", False, "score each line from a zero state")
_BATCH = flags.DEFINE_integer("batch_size", 0, "rows (0 = the config's eval.batch_size)")


def _lines():
  if not os.path.isfile(_TEXT.value):
    raise UserError(f"text file not found: {_TEXT.value}")
  lines = [" ".join(words) for words in read_sentences(_TEXT.value)]
  if not lines:
    raise UserError(f"text file {_TEXT.value} has no words")
  return lines


def _report(source, what, result, summary=""):
  """summary: the figures beyond perplexity, in words (the task's summary())."""
  print(f"{source}: {what}: perplexity {result['perplexity']:.2f} "
        f"({result['num_tokens']} tokens, {result['loss']:.4f} nats/token)"
        f"{'; ' + summary if summary else ''}")


def main(argv):
  del argv
  if bool(_WORKDIR.value) == bool(_SAVED_MODEL.value):
    raise UserError("give exactly one of --workdir and --saved_model")
  if _SAVED_MODEL.value:
    from tfsys import serving
    if not _TEXT.value:
      raise UserError("--saved_model needs --text_file (the SavedModel carries no corpus)")
    signatures = serving.load_signatures(_SAVED_MODEL.value)
    result = serving.contract_of(signatures).score_text(signatures["serving_default"], _lines())
    _report(_SAVED_MODEL.value, _TEXT.value, result)
    return
  if _PER_SENTENCE.value and not _TEXT.value:
    raise UserError("--per_sentence needs --text_file")
  from tfsys.train import tasks
  from tfsys.train.evaluate import load_trained
  config, vocab, model, path = load_trained(_WORKDIR.value)
  if _BATCH.value:
    config.eval.batch_size = _BATCH.value
  task = tasks.for_model(config, vocab, model)
  if _TEXT.value:
    result, what = task.evaluate_lines(_lines(), _PER_SENTENCE.value), _TEXT.value
  else:
    ids = make_corpus(config.data).token_ids(_SPLIT.value, vocab)
    result, what = task.evaluate_ids(ids), f"{_SPLIT.value} split"
  _report(path, what, result, task.summary(result))


if __name__ == "__main__":
  cli.run(main)
