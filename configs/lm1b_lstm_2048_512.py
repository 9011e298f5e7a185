"""LSTM-2048-512 on One Billion Word: Jozefowicz et al. 2016, Table 1 (43.7 test PPL, 0.83B params).

One LSTM layer of 2048 cells projected to 512, 512-d word embeddings, the full 793,471-word
vocabulary, an 8192-sample softmax, dropout 0.1 (paper §4: 0.1 for the models under 4096
cells), Adagrad at 0.2 with accumulators starting at 1.0, batch 128 x unroll 20 with the state
carried across batches, gradient norm clipped to 1.0.

  python scripts/train.py --config=configs/lm1b_lstm_2048_512.py --workdir=runs/lm1b_2048_512 \\
      --config.data.dir=/data/1-billion-word-language-modeling-benchmark-r13output

Expected: test perplexity approaching 43.7 after the paper's budget (about a week on 32 GPUs).
On the bundled PTB corpus, in seconds: `--config=configs/lm1b_lstm_2048_512.py:smoke`.
"""
from configs import common


def get_config(arg=None):
  config = common.base_config()
  config.data.corpus = "lm1b"
  config.data.shuffle = True
  config.model.input = "word"
  config.model.word_dim = 512
  config.model.num_layers = 1
  config.model.lstm_units = 2048
  config.model.projection = 512
  config.model.dropout = 0.1
  config.model.embedding_dropout = 0.1
  config.model.num_samples = 8192
  config.optim.name = "adagrad"
  config.optim.learning_rate = 0.2
  config.optim.initial_accumulator = 1.0
  config.optim.clip_norm = 1.0
  config.train.batch_size = 128
  config.train.unroll = 20
  config.train.num_epochs = 1
  config.train.num_steps = 0
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  config.eval.every_steps = 10000
  config.eval.batch_size = 128
  return lm1b_variant(config, arg)


def lm1b_variant(config, arg):
  if arg == "smoke":
    # The same model family on the bundled PTB text, so it runs anywhere.
    config.data.corpus = "ptb"
    config.data.shuffle = False
    return common.smoke(config)
  if arg:
    raise ValueError(f"unknown config variant {arg!r}: use smoke")
  return config
