"""Perplexity of a workdir's newest checkpoint, or of an exported SavedModel.

  python scripts/evaluate.py --workdir=W [--split=valid|test | --text_file=F [--per_sentence]]
  python scripts/evaluate.py --saved_model=E/<version> --text_file=F

A text file is read like the corpora: one tokenised sentence per line, words split on
whitespace, a sentence end after each line, words outside the vocabulary scored as <unk>.
By default the text is one stream laid out in eval.batch_size rows, the state carried from
sentence to sentence (the corpora's convention). --per_sentence scores every line on its own
from a zero state after a sentence end, as the SavedModel's serving_default signature does;
--saved_model always does, using only the SavedModel.

A sentence model (configs/ptb_vae.py, configs/ptb_rnnlm.py) always reads whole sentences and
prints its importance-weighted bound (per word as perplexity, per sentence as NLL), the ELBO
and its KL, active units and mutual information; through a SavedModel, the bound alone.
"""
from tfsys import cli  # first: sets TensorFlow's log level

import os
import tempfile

from absl import flags
import numpy as np

from tfsys.data import make_corpus
from tfsys.data.corpus import read_sentences
from tfsys.errors import UserError
from tfsys.train.evaluate import Evaluator, load_trained

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


def _report(source, what, result):
  extra = ""
  if "nll" in result:
    extra = (f"; per sentence: NLL {result['nll']:.2f} (bound, {result['iw_samples']} samples), "
             f"ELBO {result['elbo']:.2f}, KL {result['kl']:.2f}; active units "
             f"{result['active_units']}, mutual information {result['mutual_info']:.3f}")
  print(f"{source}: {what}: perplexity {result['perplexity']:.2f} "
        f"({result['num_tokens']} tokens, {result['loss']:.4f} nats/token){extra}")


def _sentence_model(config, vocab, model, path):
  import tensorflow as tf
  from tfsys.train.tasks import evaluate_sentences
  if _TEXT.value:
    sentences, what = [vocab.encode(line.split()) for line in _lines()], _TEXT.value
  else:
    from tfsys.data.sentences import split_sentences
    ids = make_corpus(config.data).token_ids(_SPLIT.value, vocab)
    sentences, what = split_sentences(ids, vocab.eos_id), f"{_SPLIT.value} split"
  result = evaluate_sentences(tf.function(model.evaluate_batch, reduce_retracing=True),
                              model.latent_dim, sentences, vocab.eos_id,
                              _BATCH.value or config.eval.batch_size, config.eval.iw_samples,
                              config.seed)
  _report(path, what, result)


def main(argv):
  del argv
  from tfsys import export
  if bool(_WORKDIR.value) == bool(_SAVED_MODEL.value):
    raise UserError("give exactly one of --workdir and --saved_model")
  if _SAVED_MODEL.value:
    if not _TEXT.value:
      raise UserError("--saved_model needs --text_file (the SavedModel carries no corpus)")
    score = export.load_signatures(_SAVED_MODEL.value)["serving_default"]
    _report(_SAVED_MODEL.value, _TEXT.value, export.score_sentences(score, _lines()))
    return
  config, vocab, model, path = load_trained(_WORKDIR.value)
  if model.data_layout == "sentences":   # every sentence is scored on its own anyway
    return _sentence_model(config, vocab, model, path)
  if _PER_SENTENCE.value:
    if not _TEXT.value:
      raise UserError("--per_sentence needs --text_file")
    with tempfile.TemporaryDirectory() as tmp:
      server = export.in_process_server(model, vocab, tmp)
      _report(path, _TEXT.value, export.score_sentences(server.score, _lines()))
    return
  if _TEXT.value:
    ids = np.concatenate([np.append(vocab.encode(line.split()), np.int32(vocab.eos_id))
                          for line in _lines()])
    what = _TEXT.value
  else:
    ids, what = make_corpus(config.data).token_ids(_SPLIT.value, vocab), f"{_SPLIT.value} split"
  evaluator = Evaluator(model, _BATCH.value or config.eval.batch_size, config.train.unroll)
  _report(path, what, evaluator.perplexity(ids))


if __name__ == "__main__":
  cli.run(main)
