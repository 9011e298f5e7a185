"""The Keras 3 contender the benchmarks share: the PTB word LSTM as a keras.Sequential, and a
callback that times its steps."""
import time

import keras


def keras_model(config, vocab_size: int):
  """configs/ptb_word_lstm.py's model as a Keras user writes it (stateless LSTMs), compiled
  with the config's SGD and gradient clipping."""
  m, t = config.model, config.train
  init = keras.initializers.RandomUniform(-m.init_scale, m.init_scale)
  layers = [keras.Input((t.unroll,), batch_size=t.batch_size, dtype="int32"),
            keras.layers.Embedding(vocab_size, m.word_dim, embeddings_initializer=init),
            keras.layers.Dropout(m.embedding_dropout)]
  for _ in range(m.num_layers):
    layers += [keras.layers.LSTM(m.lstm_units, return_sequences=True, kernel_initializer=init,
                                 recurrent_initializer=init), keras.layers.Dropout(m.dropout)]
  layers.append(keras.layers.Dense(vocab_size, kernel_initializer=init))
  model = keras.Sequential(layers)
  model.compile(keras.optimizers.SGD(config.optim.learning_rate,
                                     global_clipnorm=config.optim.clip_norm),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


class StepClock(keras.callbacks.Callback):
  """Stamps every on_train_batch_begin and on_train_end. It overrides no *_batch_end method: one
  that did would turn off Keras 3's asynchronous batch-end callbacks and change what is measured."""

  def __init__(self):
    super().__init__()
    self.stamps = []

  def on_train_batch_begin(self, batch, logs=None):
    self.stamps.append(time.perf_counter())

  def on_train_end(self, logs=None):
    self.stamps.append(time.perf_counter())
