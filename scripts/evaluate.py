"""Perplexity of a workdir's newest checkpoint.

  python scripts/evaluate.py --workdir=W [--split=valid|test | --text_file=F]

A text file is read like the corpora: one tokenised sentence per line, words split on
whitespace, a sentence end after each line, words outside the vocabulary scored as <unk>.
"""
from tfsys import cli  # first: sets TensorFlow's log level

import os

from absl import flags
import numpy as np

from tfsys.data import make_corpus
from tfsys.data.corpus import read_sentences
from tfsys.errors import UserError
from tfsys.train.evaluate import Evaluator, load_trained

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_SPLIT = flags.DEFINE_enum("split", "test", ["valid", "test"], "corpus split to evaluate")
_TEXT = flags.DEFINE_string("text_file", None, "evaluate this file instead of a corpus split")
_BATCH = flags.DEFINE_integer("batch_size", 0, "rows (0 = the config's eval.batch_size)")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  config, vocab, model, path = load_trained(_WORKDIR.value)
  if _TEXT.value:
    if not os.path.isfile(_TEXT.value):
      raise UserError(f"text file not found: {_TEXT.value}")
    parts = [np.append(vocab.encode(w), np.int32(vocab.eos_id)) for w in read_sentences(_TEXT.value)]
    if not parts:
      raise UserError(f"text file {_TEXT.value} has no words")
    ids, what = np.concatenate(parts), _TEXT.value
  else:
    ids, what = make_corpus(config.data).token_ids(_SPLIT.value, vocab), f"{_SPLIT.value} split"
  evaluator = Evaluator(model, _BATCH.value or config.eval.batch_size, config.train.unroll)
  result = evaluator.perplexity(ids)
  print(f"{path}: {what}: perplexity {result['perplexity']:.2f} "
        f"({result['num_tokens']} tokens, {result['loss']:.4f} nats/token)")


if __name__ == "__main__":
  cli.run(main)
