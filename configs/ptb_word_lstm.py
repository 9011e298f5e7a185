"""Word-embedding LSTM LM on Penn Treebank: Kim et al. 2016's LSTM-Word-Small baseline.

Kim et al. (Table 3) report 97.6 test perplexity (4.7M parameters): word embeddings of 200,
two LSTM layers of 200, dropout 0.5, and the same training recipe as the char model.

  python scripts/train.py --config=configs/ptb_word_lstm.py --workdir=runs/ptb_word_lstm

Expected: test perplexity near 97.6 after 25 epochs. Seconds: `--config=configs/ptb_word_lstm.py:smoke`.
"""
from configs import ptb_char_cnn_lstm


def get_config(arg=None):
  config = ptb_char_cnn_lstm.get_config()
  config.reference = ""                 # the char model's figures are not this model's
  config.model.input = "word"
  config.model.word_dim = 200
  config.model.lstm_units = 200
  config.model.embedding_dropout = 0.5
  return ptb_char_cnn_lstm.variant(config, arg)

