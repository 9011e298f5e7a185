"""From a config to a placement: which devices each part of a replica gets, and the record of it.

`mode(config)` says whether a run is placed at all (configs written before placement existed are
not). `assignment(config, parts, available)` gives {part: devices} from the rules, checked
against the devices this host has; `auto_plan` the auto placer's plan (auto.py), which `agree`
makes every multi_worker worker's. `write(workdir, record)`
keeps the plan as placement.json in the workdir; the TensorBoard text is the controller's.
"""
import json
import os

import tensorflow as tf

from tfsys.errors import UserError
from tfsys.placement import rules as rules_lib


def mode(config) -> str:
  """none | rules | auto."""
  placement = config.get("placement")
  return "none" if placement is None else rules_lib.mode(placement)


def local_devices(host: str = "") -> list:
  """This host's devices as rules name them: CPU:0, CPU:1 (logical), GPU:0, ... host: the
  "/job:J/replica:0/task:I" of this task in a cluster, whose other tasks' devices TensorFlow
  lists too."""
  return [rules_lib.device_name(d.name.split("device:")[-1])
          for d in tf.config.list_logical_devices() if d.device_type in ("CPU", "GPU")
          and (not host or d.name.startswith(host + "/"))]


def assignment(config, parts: list, available: list) -> dict:
  """{part: (device, ...)} for a rules-placed run, every device checked against `available`."""
  c = config.placement
  if mode(config) == "auto":
    raise UserError("internal: auto placement goes through tfsys.placement.auto")
  out = rules_lib.assign(parts, rules_lib.parse(c.rules), c.default)
  rules_lib.check_devices(out, available)
  return out


def chunks(config) -> int:
  """placement.chunks of a rules-placed run: as given, 1 for 0 (the auto placer's choice)."""
  given = config.placement.get("chunks", 0)
  if given < 0:
    raise UserError(f"--config.placement.chunks must be >= 1 (or 0: the auto placer picks), "
                    f"got {given}")
  return max(given, 1)


def chunk_choices(config) -> list:
  """The chunk counts the auto placer tries: placement.chunks if given; for 0, 1 and the
  divisors of the unroll from 2 to 8 (35: 1, 5, 7), or 1, 2, 4 where it has none."""
  if config.placement.get("chunks", 0):
    return [chunks(config)]
  unroll = config.train.unroll
  divisors = [d for d in range(2, 9) if d <= unroll and unroll % d == 0]
  return [1] + (divisors or [d for d in (2, 4) if d <= unroll])


def auto_plan(config, vocab_size: int, available: list, replicas: int = 1, devices=None,
              links=None):
  """The auto placer's plan (auto.py) for one replica of config on `available` devices: the
  cost model's figures measured on them (measure.py, ~2 s + a calibration run of the real step)
  unless `devices` describes them; the best over chunk_choices (a plan with more chunks must be
  predicted auto.MIN_GAIN faster: each chunk adds ops the model does not see whole). Unless the
  best is predicted auto.UNPLACED_GAIN faster than the whole step on the host's own device,
  the plan is that one, `unplaced`: the run places nothing (where placement cannot help, the
  placer does nothing)."""
  import time
  from tfsys.placement import auto, graph, measure
  t0 = time.perf_counter()
  if devices is None:
    devices, links = measure.measure_devices(available, seconds=2.0)
    devices = measure.calibrate(config, vocab_size, devices, replicas, seconds=3.0)
  best = None
  for k in chunk_choices(config):
    plan = auto.place(graph.config_graph(config, vocab_size, chunks=k, replicas=replicas),
                      devices, links)
    plan.chunks = k
    if best is None or plan.step_secs < best.step_secs * (1 - auto.MIN_GAIN):
      best = plan
  home = auto.home_device(devices)
  whole = graph.config_graph(config, vocab_size, replicas=replicas)
  try:   # (an unplaced step on a CPU has the host's memory, not one logical CPU's share)
    stay = auto.predict(whole, {p: home.name for p in whole.parts}, devices, links,
                        check_memory=home.kind != "CPU")
  except auto.PlacementError:   # the model does not fit on one GPU: it must be placed
    stay = None
  if stay is not None and not best.step_secs < stay.step_secs * (1 - auto.UNPLACED_GAIN):
    stay.chosen = (f"unplaced: the best plan, {1e3 * best.step_secs:.1f} ms in {best.chunks} "
                   f"chunk{'s' if best.chunks > 1 else ''} ({best.chosen}), is not "
                   f"{auto.UNPLACED_GAIN:.0%} faster than the whole step on {home.name}")
    stay.candidates, stay.unplaced = best.candidates, True
    best = stay
  best.placer_secs = time.perf_counter() - t0
  return best


def described_devices(config, available: list) -> tuple:
  """(devices, links) that placement.devices describes (auto.parse_devices, the links
  auto.default_links' assumptions), each a device this host has; (None, None) to measure them."""
  from tfsys.placement import auto
  text = config.placement.get("devices", "")
  if not text.strip():
    return None, None
  devices = auto.parse_devices(text, "--config.placement.devices")
  missing = [d.name for d in devices if d.name not in available]
  if missing:
    raise UserError(f"--config.placement.devices describes {', '.join(missing)}, which this host "
                    f"does not have; its devices: {', '.join(available)}")
  return devices, auto.default_links()


def check_memory(config, vocab_size: int, assignment: dict, available: list,
                 replicas: int = 1) -> None:
  """A PlacementError naming the device and the shortfall if `assignment` puts more parameters,
  optimizer slots and activations on a device than it holds (auto.py's check, from shapes)."""
  from tfsys.placement import auto, graph, measure
  step = graph.config_graph(config, vocab_size, chunks=chunks(config), replicas=replicas)
  auto.predict(step, assignment, measure.memory_limits(available))


def agree(strategy, assignment: dict, available: list, chunks: int = 1) -> tuple:
  """The first worker's (assignment, chunks), on every worker of a multi_worker cluster: each
  measures its own devices, and two plans that split a table differently would make their
  gradient lists differ, which an all-reduce cannot take (and the workers' steps would be cut
  differently). One all-reduce of the plan as a bitmask of devices per part and the chunk
  count (worker 0's; the others add zeros); chunks 0: the plan places nothing (unplaced)."""
  import numpy as np
  parts = list(assignment)
  mine = np.array([sum(1 << available.index(d) for d in assignment[p]) for p in parts]
                  + [chunks], np.int64)

  def reduce():
    ctx = tf.distribute.get_replica_context()
    first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.int64)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.constant(mine) * first)
  masks = strategy.experimental_local_results(strategy.run(tf.function(reduce)))[0].numpy()
  return ({p: tuple(d for k, d in enumerate(available) if int(m) >> k & 1)
           for p, m in zip(parts, masks[:-1])}, int(masks[-1]))


def parts(kind, model_config) -> list:
  """The parts of a model kind's model (a UserError for a model that declares none)."""
  model_class = kind.model_class()
  if not hasattr(model_class, "parts"):
    raise UserError(f"--config.placement: the {kind.name} model does not declare parts to place "
                    "(placement is implemented for lstm_lm); leave --config.placement.mode=none")
  return model_class.parts(model_config)


def record(config, assignment: dict, available: list, specs, plan=None) -> dict:
  """What placement.json keeps: the mode, this host's devices, and per part its devices, its
  parameters and their bytes; with the auto placer's plan, its predictions."""
  parts = {p: {"devices": list(d), "parameters": 0, "bytes": 0} for p, d in assignment.items()}
  for spec in specs:
    n = 1
    for k in spec.shape:
      n *= int(k)
    parts[spec.part]["parameters"] += n
    parts[spec.part]["bytes"] += n * spec.dtype.size
  out = {"mode": mode(config), "rules": config.placement.rules,
         "unplaced": bool(plan is not None and plan.unplaced),
         "default": config.placement.default,
         "chunks": plan.chunks if plan is not None else chunks(config),
         "devices": list(available), "parts": parts}
  if plan is not None:
    out.update(predicted_step_secs=plan.step_secs, plan=plan.to_json())
  return out


def table(record: dict) -> str:
  """The plan as a Markdown table (TensorBoard's Text tab renders it)."""
  rows = [f"placement ({record['mode']}) on {', '.join(record['devices'])}", "",
          "| part | devices | parameters | MiB |", "|---|---|---:|---:|"]
  for part, p in record["parts"].items():
    rows.append(f"| {part} | {' + '.join(p['devices'])} | {p['parameters']:,} | "
                f"{p['bytes'] / 2**20:.2f} |")
  if "predicted_step_secs" in record:
    rows += ["", f"predicted step time {1000 * record['predicted_step_secs']:.1f} ms"]
  if record.get("unplaced"):
    rows += ["", "nothing placed: no plan was predicted enough faster than the step whole on "
             "the host's device (" + record["plan"]["chosen"] + ")"]
  return "\n".join(rows)


def write(workdir: str, record: dict) -> str:
  """placement.json in the workdir, written whole (a temporary file renamed over it)."""
  path = os.path.join(workdir, "placement.json")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return path
