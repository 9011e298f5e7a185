"""The data layer: corpora, vocabularies, char encoding and tf.data stream pipelines."""
import os

from tfsys.data.corpus import Corpus, OneBillionWord, PennTreebank, TextCorpus, make_corpus
from tfsys.data.pipeline import ArrayStream, ShardStream, eval_windows
from tfsys.data.vocab import Vocabulary

VOCAB_FILE = "vocab.txt"


def load_vocabulary(data_config, corpus: Corpus, workdir: str | None = None,
                    save: bool = True) -> Vocabulary:
  """The workdir's vocabulary if it has one (so a resumed or evaluated run reads ids the way
  training did), else one built from the corpus (deterministically) and, if `save`, saved there."""
  path = os.path.join(workdir, VOCAB_FILE) if workdir else None
  if path and os.path.isfile(path):
    return Vocabulary.load(path, unk=corpus.unk, eos=corpus.eos)
  vocab = corpus.build_vocabulary(data_config.vocab_size, data_config.min_count)
  if path and save:
    vocab.save(path)
  return vocab


def train_stream(data_config, corpus: Corpus, vocab: Vocabulary, batch_size: int, unroll: int,
                 seed: int):
  """The training stream: in memory for corpora that fit (PTB, text), sharded files for LM1B."""
  if isinstance(corpus, OneBillionWord):
    return ShardStream(corpus, vocab, "train", batch_size, unroll, data_config.shuffle, seed)
  return ArrayStream(corpus.token_ids("train", vocab), batch_size, unroll, vocab.eos_id,
                     data_config.shuffle, seed)


__all__ = ["VOCAB_FILE", "Corpus", "OneBillionWord", "PennTreebank", "TextCorpus", "make_corpus", "ArrayStream",
           "ShardStream", "eval_windows", "Vocabulary", "load_vocabulary", "train_stream"]
