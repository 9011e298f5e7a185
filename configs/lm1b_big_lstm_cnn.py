"""BIG LSTM + CNN inputs on One Billion Word: Jozefowicz et al. 2016, Table 1 (30.0 PPL, 1.04B params).

Two LSTM layers of 8192 cells projected to 1024; inputs from a char CNN (16-d char
embeddings, widths 1-8 with 32..2048 maps, 4096 in all, two highway layers, projected to 1024);
an 8192-sample softmax over the full vocabulary, dropout 0.25, Adagrad 0.2 (accumulators from
1.0), batch 128 x unroll 20, state carried across batches, gradient norm clipped to 1.0.

  python scripts/train.py --config=configs/lm1b_big_lstm_cnn.py --workdir=runs/lm1b_big \\
      --config.data.dir=/data/1-billion-word-language-modeling-benchmark-r13output

Expected: test perplexity approaching 30.0 after the paper's budget (weeks on 32 GPUs).
On the bundled PTB corpus, in seconds: `--config=configs/lm1b_big_lstm_cnn.py:smoke`.
"""
from configs import lm1b_lstm_2048_512


def get_config(arg=None):
  config = lm1b_lstm_2048_512.get_config()
  config.model.input = "char_cnn"
  config.model.word_dim = 0
  config.model.char_dim = 16
  config.model.max_word_length = 50
  config.model.cnn_widths = (1, 2, 3, 4, 5, 6, 7, 8)
  config.model.cnn_filters = (32, 32, 64, 128, 256, 512, 1024, 2048)
  config.model.cnn_activation = "tanh"
  config.model.num_highway = 2
  config.model.input_projection = 1024
  config.model.num_layers = 2
  config.model.lstm_units = 8192
  config.model.projection = 1024
  config.model.cell_clip = 10.0
  config.model.dropout = 0.25
  config.model.embedding_dropout = 0.25
  return lm1b_lstm_2048_512.lm1b_variant(config, arg)
