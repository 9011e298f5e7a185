"""Generates text from a workdir's newest checkpoint.

  python scripts/sample.py --workdir=W --prompt="the company said" --num_words=30 \
      --temperature=1.0 --seed=0

Temperature 0 is greedy decoding; the same seed gives the same text. Prompt words outside the
vocabulary are read as <unk>; an empty prompt starts a new sentence.
"""
from tfsys import cli  # first: sets TensorFlow's log level

from absl import flags

from tfsys.train.evaluate import Sampler, load_trained, render

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by scripts/train.py")
_PROMPT = flags.DEFINE_string("prompt", "", "words to continue (tokenised like the corpus)")
_NUM_WORDS = flags.DEFINE_integer("num_words", 30, "words to generate")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "softmax temperature; 0 = greedy")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  _, vocab, model, _ = load_trained(_WORKDIR.value)
  words = Sampler(model, vocab).generate(_PROMPT.value, _NUM_WORDS.value, _TEMPERATURE.value,
                                         _SEED.value)
  print(render(_PROMPT.value.split() + words, vocab.eos))


if __name__ == "__main__":
  cli.run(main)
