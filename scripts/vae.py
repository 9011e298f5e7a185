"""What a trained sentence VAE does with sentences (Bowman et al. 2016 §4), from a workdir.

  python scripts/vae.py --workdir=W --mode=sample [--num_sentences=5 --seed=0 --temperature=0]
  python scripts/vae.py --workdir=W --mode=reconstruct --sentence="the company said it would ..."
  python scripts/vae.py --workdir=W --mode=homotopy --sentence="..." --sentence2="..." --steps=5
  python scripts/vae.py --workdir=W --mode=impute --sentence="..." --num_missing=3

sample: sentences decoded from z ~ N(0, I); reconstruct: each --sentence decoded from its
posterior mean (repeat the flag for several); homotopy: greedy decodings at --steps evenly
spaced points on the line between the two sentences' codes (§4.3); impute: the last
--num_missing words of --sentence filled in (§4.1: iterated posterior mean and greedy decoding).
Sentences are tokenised like PTB (lower case, words split on spaces); unknown words read as
<unk>; a sentence over the model's max_length words is cut, with a warning.
"""
from tfsys import cli  # first: sets TensorFlow's log level

from absl import flags

from tfsys.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory of a sentence VAE")
_MODE = flags.DEFINE_enum("mode", "sample", ["sample", "reconstruct", "homotopy", "impute"],
                          "what to do")
_SENTENCE = flags.DEFINE_multi_string("sentence", [], "input sentence(s)")
_SENTENCE2 = flags.DEFINE_string("sentence2", None, "homotopy: the other end")
_STEPS = flags.DEFINE_integer("steps", 5, "homotopy: points, both ends included")
_NUM_MISSING = flags.DEFINE_integer("num_missing", 2, "impute: words missing at the end")
_ITERATIONS = flags.DEFINE_integer("iterations", 3, "impute: rounds of encode and decode")
_NUM_SENTENCES = flags.DEFINE_integer("num_sentences", 5, "sample: how many")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sample, reconstruct: 0 = greedy")
_SEED = flags.DEFINE_integer("seed", 0, "sample, reconstruct: seed")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  from models.interface import SentenceModel
  from tfsys.train.evaluate import load_trained
  from tfsys.train.sentence_tools import SentenceCoder
  config, vocab, model, path = load_trained(_WORKDIR.value)
  if not isinstance(model, SentenceModel):   # what SentenceCoder calls (models/interface.py)
    raise UserError(f"{_WORKDIR.value} holds a {config.model.name} model, not a sentence VAE")
  coder = SentenceCoder(model, vocab, config.data.max_length)
  mode, sentences = _MODE.value, _SENTENCE.value
  if mode == "sample":
    for text in coder.sample_prior(_NUM_SENTENCES.value, _SEED.value, _TEMPERATURE.value):
      print(text)
  elif mode == "reconstruct":
    if not sentences:
      raise UserError("--mode=reconstruct needs --sentence")
    for s, r in zip(sentences, coder.reconstruct(sentences, _TEMPERATURE.value, _SEED.value)):
      print(f"{s}\n  => {r}")
  elif mode == "homotopy":
    if len(sentences) != 1 or _SENTENCE2.value is None:
      raise UserError("--mode=homotopy needs one --sentence and --sentence2")
    for k, text in enumerate(coder.homotopy(sentences[0], _SENTENCE2.value, _STEPS.value)):
      print(f"{k}: {text}")
  else:
    if len(sentences) != 1:
      raise UserError("--mode=impute needs one --sentence")
    print(coder.impute(sentences[0], _NUM_MISSING.value, _ITERATIONS.value))


if __name__ == "__main__":
  cli.run(main)
