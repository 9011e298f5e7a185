"""The RNNLM baseline of the sentence VAE (configs/ptb_vae.py): the same decoder, the same data
(whole PTB sentences, each from a zero state) and the same training, without a latent code.

Bowman et al. (Table 2, standard setting) report test NLL 100 nats per sentence and perplexity
116 for their RNNLM.

  python scripts/train.py --config=configs/ptb_rnnlm.py --workdir=runs/ptb_rnnlm

Expected: the NLL that the VAE's bound is compared with (bench/ptb_vae.py trains both with the
same budget; the measured figures are in README.md). Seconds: `--config=configs/ptb_rnnlm.py:smoke`.
"""
from configs import ptb_vae


def get_config(arg=None):
  config = ptb_vae.get_config()
  config.model.latent_dim = 0
  config.model.word_dropout = 0.0   # an LM without a code gains nothing from weakening its inputs
  config.model.kl_schedule = "constant"
  config.model.free_bits = 0.0      # no latent code, no KL
  return ptb_vae.variant(config, arg)
