"""Generates text from a workdir's newest checkpoint, or from an exported SavedModel.

  python scripts/sample.py --workdir=W --prompt="the company said" --num_words=30 \
      --temperature=1.0 --seed=0
  python scripts/sample.py --saved_model=E/<version> --prompt="the company said" ...

With --saved_model only the SavedModel's `generate` signature is used; it gives the same text as
the checkpoint it was exported from for the same prompt, temperature and seed.

Temperature 0 is greedy decoding; the same seed gives the same text. Prompt words outside the
vocabulary are read as <unk>; an empty prompt starts a new sentence.
"""
from tfsys import cli  # first: sets TensorFlow's log level

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


def main(argv):
  del argv
  if bool(_WORKDIR.value) == bool(_SAVED_MODEL.value):
    raise UserError("give exactly one of --workdir and --saved_model")
  if _SAVED_MODEL.value:
    import tensorflow as tf
    from tfsys.export import load_signatures
    if _TEMPERATURE.value < 0:
      raise UserError(f"temperature must be >= 0 (0 = greedy), got {_TEMPERATURE.value}")
    generate = load_signatures(_SAVED_MODEL.value)["generate"]
    out = generate(prompt=tf.constant([_PROMPT.value]), max_words=tf.constant(_NUM_WORDS.value),
                   temperature=tf.constant(_TEMPERATURE.value, tf.float32),
                   seed=tf.constant(_SEED.value))
    print(out["text"][0].numpy().decode("utf-8", errors="replace"))
    return
  _, vocab, model, _ = load_trained(_WORKDIR.value)
  words = Sampler(model, vocab).generate(_PROMPT.value, _NUM_WORDS.value, _TEMPERATURE.value,
                                         _SEED.value)
  print(render(_PROMPT.value.split() + words, vocab.eos))


if __name__ == "__main__":
  cli.run(main)
