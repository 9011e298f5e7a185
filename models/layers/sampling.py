"""The next word from a softmax: greedy, or a temperature sample, one function for every decoder.

The language model's Sampler (tfsys/train/evaluate.py), its `generate` signature
(tfsys/serving/lm.py) and the sentence VAE's decoder (models/sentence_vae.py) all draw through
here, so that a checkpoint and the SavedModel exported from it give the same text for the same
seed: the draw is stateless (a function of the seed alone, models/layers/stateless.py says why).
"""
import tensorflow as tf

# Dividing by a temperature of exactly 0 would make the logits infinite; at 0 the draw is not
# used (argmax is), so any small positive floor keeps the unused branch finite.
MIN_TEMPERATURE = 1e-6


def next_ids(logits, temperature, seed):
  """Ids int32 [B] from logits [B, V]: the argmax at temperature 0, else a draw from
  softmax(logits / temperature) (Ackley et al. 1985's Boltzmann temperature: below 1 sharpens
  the distribution towards the argmax, above 1 flattens it towards uniform). temperature: a
  float32 scalar >= 0 (a tensor: one graph serves both); seed: int32 [2], stateless."""
  sampled = tf.random.stateless_categorical(logits / tf.maximum(temperature, MIN_TEMPERATURE), 1,
                                            seed)[:, 0]
  greedy = tf.argmax(logits, axis=-1)
  return tf.cast(tf.where(temperature > 0, sampled, greedy), tf.int32)
