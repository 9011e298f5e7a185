"""Fields every experiment has, with their meaning. Experiment files import this and change a few."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                       # model init, dropout, sampled-softmax negatives, data order
  config.reference = ""                 # what the test perplexity means, printed by train.py at the end

  config.data = ml_collections.ConfigDict()
  config.data.corpus = "ptb"            # ptb (bundled) | lm1b (directory) | text (files)
  config.data.dir = ""                  # lm1b: the benchmark's directory, as distributed
  config.data.vocab_file = ""           # lm1b: `word count` file (default: found in data.dir)
  config.data.train_path = ""           # text: file or directory, one sentence per line
  config.data.valid_path = ""           # text
  config.data.test_path = ""            # text
  config.data.vocab_size = 0            # keep the most frequent words (0 = all)
  config.data.min_count = 1             # drop words seen fewer times in train (built vocabularies)
  config.data.shuffle = False           # permute sentences every epoch (from seed, epoch)
  config.data.utf8_errors = "strict"    # strict: a non-UTF-8 line is an error naming file:line;
                                        # replace: bad bytes become U+FFFD

  config.model = ml_collections.ConfigDict()
  config.model.name = "lstm_lm"         # models.build() picks the model by this name
  config.model.input = "char_cnn"       # char_cnn | word
  config.model.word_dim = 0             # word input: embedding size
  config.model.char_dim = 15            # char_cnn: char embedding size
  config.model.max_word_length = 50     # bytes incl. begin/end marks (Jozefowicz §3.3: 32 too short)
  config.model.cnn_widths = (1, 2, 3, 4, 5, 6)
  config.model.cnn_filters = (25, 50, 75, 100, 125, 150)
  config.model.cnn_activation = "tanh"
  config.model.num_highway = 1
  config.model.highway_activation = "relu"
  config.model.zero_pad_chars = False   # the padding after a word embeds to a fixed zero vector
  config.model.input_projection = 0     # project the CNN output to this size (0 = none)
  config.model.num_layers = 2
  config.model.lstm_units = 300
  config.model.projection = 0           # LSTMP projection size (0 = plain LSTM)
  config.model.cell_clip = 0.0          # clip the LSTM cell to ±cell_clip (0 = off)
  config.model.forget_bias = 1.0        # added to the forget gate (Jozefowicz et al. 2015; Kim 0)
  config.model.dropout = 0.5            # on non-recurrent connections (Zaremba et al. 2014)
  config.model.embedding_dropout = 0.5  # on the inputs of the first LSTM layer
  config.model.num_samples = 0          # sampled-softmax negatives in training (0 = full softmax)
  config.model.init_scale = 0.05        # weights ~ U(-init_scale, init_scale)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 20          # global batch (rows of the token stream)
  config.train.unroll = 35              # truncated-BPTT length; state carries across batches
  config.train.num_epochs = 25          # used when num_steps is 0
  config.train.num_steps = 0            # stop after this many steps (0 = num_epochs)
  config.train.log_every = 100          # console progress line and train scalars
  config.train.checkpoint_every = 1000  # steps; also at the end and on Ctrl-C
  config.train.keep_checkpoints = 3
  config.train.histogram_every = 1000   # weight histograms in TensorBoard
  # Steps per tf.function call on the all-reduce backends: the host reads their losses once per
  # call (a checkpoint, evaluation or progress line still lands on its exact step). 4: 2-7%
  # more words/s than 1 on the PTB word LSTM on a 2-core CPU, 16 no better (README).
  config.train.steps_per_loop = 4
  # float32 | bfloat16: mixed precision, the matmuls in bf16, variables, state and loss in
  # float32 (tfsys/train/precision.py; faster only where the CPU or GPU has native bf16) |
  # float16: the same in float16 with dynamic loss scaling (GPUs; all-reduce backends only)
  config.train.precision = "float32"
  # XLA on the forward and backward (tfsys/train/step.py): off, measured slower on the char
  # model and in bf16 on this project's CPUs, faster only for the word LM in float32 (README)
  config.train.jit_compile = False
  # Stop (keeping the last good checkpoint) once the training or validation loss per token is
  # above this many times ln V, the loss of a uniform guess, after optim.warmup_steps: at 2 the
  # model's perplexity is V², far past anything a learning run passes through (0 = off).
  config.train.divergence_factor = 2.0

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "sgd"             # sgd | adagrad | adam
  config.optim.learning_rate = 1.0
  config.optim.momentum = 0.0           # sgd
  config.optim.initial_accumulator = 0.1  # adagrad
  config.optim.clip_norm = 5.0          # global gradient-norm clipping (0 = off)
  config.optim.loss_per = "token"       # token: minimise the mean NLL per token; sequence: the
                                        # NLL summed over the unroll, averaged over rows
  config.optim.schedule = "constant"    # constant | plateau (halve when eval stalls, Kim et al.)
  config.optim.plateau_factor = 0.5     # plateau: lr *= factor when ...
  config.optim.plateau_threshold = 1.0  # ... eval perplexity improved by less than this
  config.optim.min_learning_rate = 1e-6  # plateau: ... but never below this rate (0 = no floor)
  config.optim.scale_lr_with_batch = False  # Goyal et al.: lr = base_lr * batch / base_batch
  config.optim.base_batch = 20          # the batch the learning rate was tuned for
  config.optim.warmup_steps = 0         # linear warmup from ~0 to the lr (Goyal et al. §2.2)

  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 0           # validation perplexity every N steps (0 = every epoch)
  config.eval.batch_size = 10           # rows; each starts from a zero state
  config.eval.max_tokens = 0            # evaluate only the first N tokens (0 = all)
  config.eval.sample_words = 30         # words per sample sentence in TensorBoard and the log
  config.eval.num_samples = 3
  config.eval.temperature = 1.0

  config.monitor = ml_collections.ConfigDict()
  config.monitor.noise_scale_every = 10  # gradient noise scale every N steps (needs >= 2 replicas; 0 = off)
  config.monitor.noise_scale_decay = 0.95  # its moving averages (McCandlish et al. App. A.1)
  config.monitor.profile_steps = ""      # "A,B": tf.profiler trace of steps A..B (from 1) into the
                                        # train run's Profile tab; single/mirrored/multi_worker; "" = off

  # Where a replica's parts run (tfsys/placement/rules.py): the LSTM LM's parts are char_cnn or
  # embedding, lstm0, lstm1, ..., softmax; devices are named on the replica's host.
  config.placement = ml_collections.ConfigDict()
  config.placement.mode = "none"     # none | rules | auto (the cost-model placer)
  config.placement.rules = ""        # "pattern=DEV[+DEV], ...", first match wins, e.g.
                                     # "lstm0=CPU:1, lstm1=CPU:2, softmax=CPU:0+CPU:3" (+: rows split)
  config.placement.default = "CPU:0"  # the device of parts no rule matches
  config.placement.chunks = 0        # cut the unroll into this many chunks, so that layers on
                                     # different devices pipeline them (whitepaper Fig. 8);
                                     # 0: the auto placer picks (rules: 1)
  config.placement.devices = ""      # auto: describe this host's devices, NAME=MEMORY@GFLOPS,...
                                     # (e.g. "CPU:0=8GiB@100,CPU:1=8GiB@100"), instead of
                                     # measuring them: a plan from the cost model alone

  config.distribute = ml_collections.ConfigDict()
  config.distribute.backend = "single"  # single | mirrored (all local GPUs, else logical CPUs)
                                        # | multi_worker (processes from TF_CONFIG)
                                        # | sync_backup | async_ps (parameter servers, TF_CONFIG)
  config.distribute.num_logical_cpus = 2  # without GPUs: mirrored's replicas, placement's devices
  config.distribute.intra_op_threads = 0  # threads per op (0 = TensorFlow's default: all cores)
  config.distribute.startup_timeout_secs = 120.0  # wait this long for every task (or the ps)
  # sync_backup (Chen et al. 2016; TF1's SyncReplicasOptimizer): N + b worker tasks compute each
  # step; the chief averages the first N gradients and drops the b late ones.
  config.distribute.replicas_to_aggregate = 1  # N
  config.distribute.total_num_replicas = 1     # N + b (= the number of worker tasks)
  config.distribute.shard_min_rows = 1000  # ps backends: split variables with this many rows
                                           # by rows over every ps task
  config.distribute.log_workers_every = 100  # sync_backup: log which workers a step used
  config.distribute.wait_log_secs = 10.0  # sync_backup: say whom the chief waits for this often
  config.distribute.chief_timeout_secs = 30.0  # ps workers: exit once the chief is gone this long
  config.distribute.ps_timeout_secs = 30.0  # ps backends: a ps task unreachable this long is lost
  config.distribute.collective_timeout_secs = 60.0  # multi_worker: a collective waiting this long
  #                                                   for a peer ends the run, naming the loss
  # mirrored, multi_worker: the gradients' all-reduce in this dtype (bfloat16 halves the bytes;
  # float32 sums) and packed into chunks of this many MB (0: TensorFlow's choice)
  config.distribute.allreduce_dtype = "float32"
  config.distribute.allreduce_pack_mb = 0.0
  # Straggler injection (tests, benchmarks): every ps worker's step of compute takes at least
  # compute_ms (simulated compute: it sleeps what its real computation left of it); the chosen
  # workers also sleep, with `probability` per step, scale_ms * (1 + Pareto(shape)) more
  # (heavy-tailed, >= scale_ms).
  config.distribute.straggler = ml_collections.ConfigDict()
  config.distribute.straggler.compute_ms = 0.0
  config.distribute.straggler.workers = ""   # "" (none) | "all" | worker indices, e.g. "0,2"
  config.distribute.straggler.probability = 1.0
  config.distribute.straggler.scale_ms = 0.0
  config.distribute.straggler.shape = 1.5
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any experiment to a CPU run of seconds: same code paths, tiny sizes."""
  config.reference = ""                 # the full-size figures say nothing of a smoke run
  config.data.vocab_size = min(config.data.vocab_size or 2000, 2000)
  config.model.lstm_units = 32
  config.model.projection = 16 if config.model.projection else 0
  config.model.word_dim = 16 if config.model.word_dim else 0
  config.model.char_dim = 8
  config.model.max_word_length = 20
  config.model.cnn_widths = (1, 2, 3)
  config.model.cnn_filters = (8, 8, 16)
  config.model.num_highway = min(config.model.num_highway, 1)
  config.model.input_projection = 16 if config.model.input_projection else 0
  config.model.num_samples = min(config.model.num_samples, 64)
  config.train.batch_size = 4
  config.train.unroll = 10
  config.train.num_steps = 30
  config.train.log_every = 10
  config.train.checkpoint_every = 20
  config.train.histogram_every = 20
  config.eval.every_steps = 20
  config.eval.max_tokens = 2000
  config.eval.sample_words = 10
  config.eval.num_samples = 1
  return config
