"""What a PTB perplexity means: the scores of a uniform guess and of a unigram model.

  python bench/ptb_baselines.py

Both read the bundled PTB with the default config's 10k vocabulary and score every token the
language models are scored on (the words and each sentence end). The unigram model is the
train split's word frequencies with add-one smoothing. The last line is one JSON object.
"""
import collections
import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import ptb_char_cnn_lstm  # noqa: E402
from tfsys.data import PennTreebank, load_vocabulary  # noqa: E402


def unigram_perplexity(train_ids, ids, vocab_size: int) -> float:
  counts = collections.Counter(train_ids.tolist())
  total = len(train_ids) + vocab_size
  nll = -sum(math.log((counts[i] + 1) / total) for i in ids.tolist()) / len(ids)
  return math.exp(nll)


def main():
  config = ptb_char_cnn_lstm.get_config()
  corpus = PennTreebank()
  vocab = load_vocabulary(config.data, corpus)
  train = corpus.token_ids("train", vocab)
  out = {"vocab_size": len(vocab), "uniform_perplexity": float(len(vocab))}
  for split in ("valid", "test"):
    ids = corpus.token_ids(split, vocab)
    out[f"unigram_{split}_perplexity"] = round(unigram_perplexity(train, ids, len(vocab)), 2)
    out[f"{split}_tokens"] = len(ids)
    print(f"{split}: unigram perplexity {out[f'unigram_{split}_perplexity']:.1f} "
          f"over {len(ids)} tokens; uniform {len(vocab)}")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
