"""Prints a config's placement plan without training: python scripts/place.py --config=configs/X.py

  --config.placement.mode=auto          the auto placer's plan (tfsys/placement/auto.py)
  --config.placement.rules="lstm0=..."  the rules' plan, with the cost model's predictions

By default the devices are this machine's (its GPUs, or --config.distribute.num_logical_cpus
logical CPUs), measured for the cost model in about 2 seconds (auto: then calibrated on the
real step, as training does: seconds more). --devices (or --config.placement.devices) describes
devices this machine need not have, and nothing is allocated: the plan comes from shapes and
the cost model,

  python scripts/place.py --config=configs/lm1b_big_lstm_cnn.py --vocab_size=793471 \\
      --config.placement.mode=auto --devices="CPU:0=64GiB@100,GPU:0=16GiB@15000,GPU:1=16GiB@15000"

(NAME=MEMORY@GFLOP/s per device; links: tfsys/placement/schedule.py's default_links). The plan
ends with the rules that give it (--config.placement.rules=...), e.g. for the ps backends,
where the auto placer does not run; or, where the auto placer would place nothing, says so.
"""
from tfsys import cli  # first: sets TensorFlow's log level

from absl import flags
from ml_collections import config_flags

from tfsys.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_DEVICES = flags.DEFINE_string("devices", "", "devices to plan for, NAME=MEMORY@GFLOPS,... "
                               "(default: this machine's, measured)")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "the vocabulary's size (default: "
                              "config.data.vocab_size, else the corpus's vocabulary)")
_REPLICAS = flags.DEFINE_integer("replicas", 1, "replicas sharing train.batch_size "
                                 "(multi_worker: the workers)")
flags.mark_flags_as_required(["config"])


def vocab_size(config) -> int:
  if _VOCAB.value:
    return _VOCAB.value
  if config.data.vocab_size:
    return config.data.vocab_size
  from tfsys import data
  try:
    corpus = data.make_corpus(config.data)
    return len(data.load_vocabulary(config.data, corpus, workdir=None, save=False))
  except UserError as e:
    raise UserError(f"{e}; or give --vocab_size (the LM1B vocabulary has 793,471 words)") from None


def main(argv):
  del argv
  import models
  from tfsys.placement import auto, graph, placer, rules
  config = _CONFIG.value
  mode = placer.mode(config)
  if mode == "none":
    raise UserError("give --config.placement.mode=auto or --config.placement.rules=... "
                    "(this config places nothing)")
  parts = placer.parts(models.kind(config.model), config.model)
  size = vocab_size(config)
  described = _DEVICES.value or config.placement.get("devices", "")
  if described:
    devices, links = auto.parse_devices(
        described, "--devices" if _DEVICES.value else "--config.placement.devices"), None
    names = [d.name for d in devices]
  else:
    from tfsys.distribute.backends import make_backend
    make_backend(config.distribute, placed=True)   # this machine's devices, as training has them
    from tfsys.placement import measure
    names = placer.local_devices()
    # auto: measured and calibrated on the real step, as training does (auto_plan)
    devices, links = (None, None) if mode == "auto" else measure.measure_devices(names)
  if mode == "auto":
    plan = placer.auto_plan(config, size, names, _REPLICAS.value, devices, links)
  else:
    assignment = placer.assignment(config, parts, names)
    step = graph.config_graph(config, size, chunks=placer.chunks(config),
                              replicas=_REPLICAS.value)
    plan = auto.predict(step, assignment, devices, links)
    plan.chunks = placer.chunks(config)
  print(f"{config.model.name}: vocabulary {size:,}, {mode} placement on "
        f"{', '.join(names)}\n")
  print(plan.table())
  if plan.unplaced:
    print("\nnothing to place: run it unplaced (--config.placement.mode=none)")
    return
  given = rules.as_text(plan.device_tuples())
  print(f"\nas rules: --config.placement.rules=\"{given}\" "
        f"--config.placement.chunks={plan.chunks}")


if __name__ == "__main__":
  cli.run(main)
