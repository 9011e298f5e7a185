"""Generates text from a workdir's newest checkpoint, or from an exported SavedModel.

  python scripts/sample.py --workdir=W --prompt="the company said" --num_words=30 \
      --temperature=1.0 --seed=0
  python scripts/sample.py --saved_model=E/<version> --prompt="the company said" ...

With --saved_model only the SavedModel's `generate` signature is used; it gives the same text as
the checkpoint it was exported from for the same prompt, temperature and seed. The flags are
checked the same way in both modes (a bad one is one error line, exit status 2); a SavedModel
generates at most 1,000 words.

Temperature 0 is greedy decoding; the same seed gives the same text. Prompt words outside the
vocabulary are read as <unk>; an empty prompt starts a new sentence.

A sentence VAE (or its RNNLM) prints --num_sentences sentences from the prior instead (z ~ N(0, I)
from the seed, decoded greedily at temperature 0, Bowman et al. §4); the prompt is not used
(scripts/vae.py reconstructs, interpolates and imputes). With --saved_model its `sample`
signature gives the same sentences as the checkpoint for the same seed and temperature.
"""
from tfsys import cli  # first: sets TensorFlow's log level

import math

from absl import flags

from tfsys.errors import UserError
from tfsys.train.evaluate import Sampler, load_trained, render

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "an exported version directory E/<n> "
                                   "(then only the SavedModel is used)")
_PROMPT = flags.DEFINE_string("prompt", "", "words to continue (tokenised like the corpus)")
_NUM_WORDS = flags.DEFINE_integer("num_words", 30, "words to generate")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "softmax temperature; 0 = greedy")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_NUM_SENTENCES = flags.DEFINE_integer("num_sentences", 5, "sentence models: sentences to sample")


def _check_flags():
  """The same checks, with the same one-line errors, whichever of --workdir and --saved_model
  runs: the SavedModel would otherwise clamp a negative --num_words to 0 and print an empty
  line, and a seed outside int32 would fail as a conversion traceback in either mode."""
  if bool(_WORKDIR.value) == bool(_SAVED_MODEL.value):
    raise UserError("give exactly one of --workdir and --saved_model")
  if not (math.isfinite(_TEMPERATURE.value) and _TEMPERATURE.value >= 0):
    raise UserError(f"--temperature must be >= 0 and finite (0 = greedy), got {_TEMPERATURE.value}")
  if _NUM_WORDS.value < 0:
    raise UserError(f"--num_words must be >= 0, got {_NUM_WORDS.value}")
  if _NUM_SENTENCES.value < 0:
    raise UserError(f"--num_sentences must be >= 0, got {_NUM_SENTENCES.value}")
  if not -2**31 <= _SEED.value < 2**31:   # both modes pass it to TensorFlow as int32
    raise UserError(f"--seed must fit in 32 bits (-2147483648 to 2147483647), got {_SEED.value}")


def main(argv):
  del argv
  _check_flags()
  if _SAVED_MODEL.value:
    import tensorflow as tf
    from tfsys.export import MAX_GENERATE_WORDS, load_signatures
    signatures = load_signatures(_SAVED_MODEL.value)
    if "sample" in signatures:   # a sentence model
      out = signatures["sample"](count=tf.constant(_NUM_SENTENCES.value),
                                 temperature=tf.constant(_TEMPERATURE.value, tf.float32),
                                 seed=tf.constant(_SEED.value))
      for text in out["text"].numpy():
        print(text.decode("utf-8", errors="replace"))
      return
    if _NUM_WORDS.value > MAX_GENERATE_WORDS:
      # The signature would cut the text there without saying so; a checkpoint has no limit.
      raise UserError(f"--num_words={_NUM_WORDS.value} is more than a SavedModel generates "
                      f"({MAX_GENERATE_WORDS}): lower it, or sample from the --workdir")
    generate = signatures["generate"]
    out = generate(prompt=tf.constant([_PROMPT.value]), max_words=tf.constant(_NUM_WORDS.value),
                   temperature=tf.constant(_TEMPERATURE.value, tf.float32),
                   seed=tf.constant(_SEED.value))
    print(out["text"][0].numpy().decode("utf-8", errors="replace"))
    return
  config, vocab, model, _ = load_trained(_WORKDIR.value)
  if model.data_layout == "sentences":
    from tfsys.train.sentence_tools import SentenceCoder
    coder = SentenceCoder(model, vocab, config.data.max_length)
    for text in coder.sample_prior(_NUM_SENTENCES.value, _SEED.value, _TEMPERATURE.value):
      print(text)
    return
  words = Sampler(model, vocab).generate(_PROMPT.value, _NUM_WORDS.value, _TEMPERATURE.value,
                                         _SEED.value)
  print(render(_PROMPT.value.split() + words, vocab.eos))


if __name__ == "__main__":
  cli.run(main)
