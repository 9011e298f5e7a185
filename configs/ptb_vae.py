"""The sentence VAE of Bowman et al. 2016 on Penn Treebank sentences, with KL annealing and
word dropout (models/sentence_vae.py).

Bowman et al. (Table 2, the standard setting) report on PTB test: VAE NLL 101 nats per sentence
with KL 2 and perplexity 119, against their RNNLM's 100 and 116 (configs/ptb_rnnlm.py is the
baseline: the same decoder without a latent code). The sizes here are ours, chosen to train on
2 CPU cores: one LSTM layer of 256 for the encoder and the decoder, embeddings of 256, a
32-dimensional z, dropout 0.5 on the decoder's non-recurrent connections as for the RNNLM, word
dropout 0.25, the logistic KL schedule over the first 4,000 steps, free bits of 0.1 nats per
latent dimension (Kingma et al. 2016), Adam at 1e-3, batches of 32 sentences. Free bits are on
by default because without them (`:bowman`, annealing and word dropout alone) the KL settled
near 1.2 nats here at the same NLL; with them it stays above 3 (README.md, Results).

  python scripts/train.py --config=configs/ptb_vae.py --workdir=runs/ptb_vae

Expected: a test bound (importance-weighted, eval.iw_samples samples) within a few nats per
sentence of the RNNLM's with the KL clearly above zero; the measured figures (bench/ptb_vae.py)
are in README.md. Seconds, for tests: `--config=configs/ptb_vae.py:smoke`.
Variants: `:bowman` (no free bits: Bowman et al.'s recipe alone), `:cyclical` (Fu et al.
2019's schedule), `:inputless` (word dropout 1.0, Bowman §3.1).
"""
import ml_collections

from configs import common


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "sentence_vae"
  m.embedding_dim = 256
  m.lstm_units = 256
  m.num_layers = 1
  m.latent_dim = 32             # 0 = no latent code: the RNNLM baseline
  m.feed_z = False              # also append z to every decoder input (Bowman §3.1 tried it)
  m.dropout = 0.5               # decoder inputs and outputs (non-recurrent connections)
  m.word_dropout = 0.25         # decoder input words replaced by <unk> (1.0 = inputless decoder)
  m.kl_schedule = "logistic"    # logistic (Bowman Fig. 2) | linear | cyclical (Fu et al.) | constant
  m.kl_anneal_steps = 4000      # logistic: ~0 at step 0, 0.5 at half, ~1 here; linear: 1 here
  m.kl_cycle_steps = 4000       # cyclical: period of one cycle
  m.kl_cycle_ratio = 0.5        # cyclical: fraction of a cycle spent rising from 0 to 1
  m.free_bits = 0.1             # nats per latent dimension the KL counts as at least (0 = off)
  m.init_scale = 0.08           # weights ~ U(-init_scale, init_scale)
  return m


def get_config(arg=None):
  config = common.base_config()
  config.model = model_config()
  config.data.shuffle = True
  config.data.max_length = 100          # words; longer training sentences are cut (PTB: none)
  config.train.batch_size = 32          # sentences per batch (length-bucketed)
  config.train.num_epochs = 12
  config.train.log_every = 100
  config.train.checkpoint_every = 1000
  config.optim.name = "adam"
  config.optim.learning_rate = 1e-3
  config.optim.clip_norm = 5.0
  config.optim.loss_per = "token"
  config.optim.schedule = "constant"
  config.eval.batch_size = 64           # sentences
  config.eval.iw_samples = 20           # importance samples of the bound (Burda et al. 2016)
  config.eval.max_sentences = 1000      # validate on the first N sentences (0 = all; test: all)
  config.eval.num_samples = 3           # prior samples and reconstructions at each evaluation
  return variant(config, arg)


def variant(config, arg):
  if arg == "smoke":
    return smoke(config)
  if arg == "cyclical":
    config.model.kl_schedule = "cyclical"
    return config
  if arg == "bowman":
    config.model.free_bits = 0.0
    return config
  if arg == "inputless":
    config.model.word_dropout = 1.0
    return config
  if arg:
    raise ValueError(f"unknown config variant {arg!r}: use smoke, bowman, cyclical or inputless")
  return config


def smoke(config):
  config.data.vocab_size = 2000
  config.data.max_length = 30
  m = config.model
  m.embedding_dim, m.lstm_units = 16, 32
  m.latent_dim = min(m.latent_dim, 8)
  m.kl_anneal_steps = m.kl_cycle_steps = 20
  config.train.batch_size = 8
  config.train.num_steps = 30
  config.train.log_every = 10
  config.train.checkpoint_every = 20
  config.train.histogram_every = 20
  config.eval.every_steps = 20
  config.eval.max_sentences = 100
  config.eval.iw_samples = 3
  config.eval.num_samples = 1
  return config
