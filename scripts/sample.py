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
  request = dict(prompt=_PROMPT.value, num_words=_NUM_WORDS.value,
                 num_sentences=_NUM_SENTENCES.value, temperature=_TEMPERATURE.value,
                 seed=_SEED.value)
  if _SAVED_MODEL.value:   # what the model's serving module samples, through its signatures
    from tfsys import serving
    signatures = serving.load_signatures(_SAVED_MODEL.value)
    texts = serving.contract_of(signatures).sample_text(signatures, **request)
  else:                    # what the model's task samples (tfsys/train/tasks.py)
    from tfsys.train import tasks
    from tfsys.train.evaluate import load_trained
    config, vocab, model, _ = load_trained(_WORKDIR.value)
    texts = tasks.for_model(config, vocab, model).sample_text(**request)
  for text in texts:
    print(text)


if __name__ == "__main__":
  cli.run(main)
