"""Step time of placement plans, measured and predicted, against doing nothing.

  python bench/placement.py [--steps=12]

For configs/ptb_char_cnn_lstm.py (the headline) and configs/ptb_word_lstm.py, full size (batch
20 x 35, 10k vocabulary), one training step (forward, backward, SGD update; models/lstm_lm.py
placed by models/variables.py's DevicePlacement) timed under:

  a0 default      no placement: one CPU device, TensorFlow's own intra-op threads (all cores)
  a  one device   every part on CPU:0
  b  round-robin  the parts in order over CPU:0, CPU:1
  c  best manual  the fastest of a few hand-made plans (layers apart, softmax apart; pipelined
                  over chunks of the unroll, the whitepaper's Figure 8)
  d  auto         placement.mode=auto: tfsys/placement/auto.py's plan, the placer's chunks too

a..d run in one process with 2 logical CPU devices and one intra-op thread each (issue 16: on
a 2-core machine that is where splitting can pipeline); a0 in a process of its own (TensorFlow
fixes a process's devices and threads when it starts). d runs once more as users run it: 2
logical CPU devices sharing TensorFlow's own intra-op threads (`--config.placement.mode=auto`
and nothing else), in a process of its own, next to the one-device plan there; that is the
`auto_step_ms` held against doing nothing (a0), and the one-thread auto against b and c. Next
to every plan: the cost model's predicted step time (measured devices,
tfsys/placement/measure.py); for a0, the one-device plan on a device measured with all the
threads. `placer_secs` is the auto placer's wall time with its measurement (the slower of its
two runs). Each plan is timed over --steps steps after 3 of warm-up (median), the plans of one
process in turns (4 rounds), so that a burst of other work falls on all of them alike; a0 is
run before and after the others, and its two medians averaged. The last line is one JSON
object.
"""
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 16, "timed steps per plan")
_WORKER = flags.DEFINE_enum("worker", "", ["", "default", "split", "shared"],
                            "internal: measure one process's plans and print their JSON line")
_MODEL = flags.DEFINE_enum("model", "char", ["char", "word"], "internal: which config")

CONFIGS = {"char": "ptb_char_cnn_lstm", "word": "ptb_word_lstm"}
VOCAB = 10_000
CHUNKS = (1, 5, 7)   # the unroll of 35 cut into this many chunks


def config(model: str):
  import importlib
  c = importlib.import_module(f"configs.{CONFIGS[model]}").get_config()
  c.data.vocab_size = VOCAB
  return c


def manual_plans(parts: list) -> dict:
  """Hand-made plans over CPU:0 and CPU:1: {label: (assignment, chunks)}."""
  lstms, top = [p for p in parts if p.startswith("lstm")], parts[-1]
  one = {p: ("CPU:0",) for p in parts}
  plans = {}
  for chunks in CHUNKS:
    # the lower half of the stack on CPU:0, the upper half and the softmax on CPU:1
    half = {**one, **{p: ("CPU:1",) for p in lstms[len(lstms) // 2:] + [top]}}
    plans[f"layers apart, {chunks} chunks"] = (half, chunks)
    # everything but the softmax on CPU:0, the softmax (the largest cost) on CPU:1
    plans[f"softmax apart, {chunks} chunks"] = ({**one, top: ("CPU:1",)}, chunks)
  plans["softmax rows split"] = ({**one, top: ("CPU:0", "CPU:1")}, 1)
  return plans


def plan_step(model_config, words, assignment, chunks: int):
  """fn() -> seconds of one training step of the placed model (None: unplaced), warmed up."""
  import tensorflow as tf
  import models
  from models.sharded import variables_of
  from models.variables import DevicePlacement, parameters
  from tfsys.train.optim import make_optimizer
  c = config(model_config)
  placement = DevicePlacement(assignment, chunks=chunks) if assignment else None
  model = models.build(c.model, words, seed=0, placement=placement)
  params = parameters(model)
  variables = variables_of(params)
  optimizer = make_optimizer(c.optim)
  optimizer.build(params)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, len(words), size=(c.train.batch_size, c.train.unroll + 1))
  batch = {"inputs": tf.constant(ids[:, :-1], tf.int32), "targets": tf.constant(ids[:, 1:], tf.int32),
           "weights": tf.ones([c.train.batch_size, c.train.unroll])}
  state = [model.initial_state(c.train.batch_size)]
  step_var = tf.Variable(0, dtype=tf.int64)

  @tf.function
  def step(batch, state):
    with tf.GradientTape() as tape:
      loss, _, state = model.loss(batch, state, training=True, step=step_var)
    grads = tape.gradient(loss, variables)
    grads, _ = tf.clip_by_global_norm(grads, c.optim.clip_norm)
    optimizer.apply(grads, variables, 0.1)
    step_var.assign_add(1)
    return loss, state

  def timed():
    t = time.perf_counter()
    loss, state[0] = step(batch, state[0])
    float(loss)   # the step is done
    return time.perf_counter() - t
  for _ in range(3):
    timed()
  return timed


def time_plans(model_config, words, plans: dict, steps: int, rounds: int = 4) -> dict:
  """{label: median seconds of a step} of {label: (assignment, chunks)}, every plan built first
  and then timed in turns, `rounds` turns of steps / rounds steps each, so that a burst of other
  work on the machine falls on every plan alike, not on one."""
  fns = {label: plan_step(model_config, words, a, k) for label, (a, k) in plans.items()}
  times = {label: [] for label in plans}
  for _ in range(rounds):
    for label, fn in fns.items():
      times[label] += [fn() for _ in range(max(steps // rounds, 1))]
  return {label: float(np.median(t)) for label, t in times.items()}


def predicted(c, assignment, chunks, devices, links) -> float:
  from tfsys.placement import auto, graph
  return auto.predict(graph.config_graph(c, VOCAB, chunks=chunks), assignment, devices,
                      links).step_secs


def worker_default(model: str, steps: int) -> dict:
  from tfsys.placement import measure
  words = [f"w{i}" for i in range(VOCAB)]
  c = config(model)
  devices, links = measure.measure_devices(["CPU:0"])
  devices = measure.calibrate(c, VOCAB, devices, seconds=3.0)
  from models.lstm_lm import parts
  one = {p: ("CPU:0",) for p in parts(c.model)}
  measured = time_plans(model, words, {"default": (None, 1)}, steps)["default"]
  return {"default": {"measured_ms": 1e3 * measured,
                      "predicted_ms": 1e3 * predicted(c, one, 1, devices, links),
                      "gflops": devices[0].gflops}}


def worker_split(model: str, steps: int, manual: bool = True) -> dict:
  """The plans on 2 logical CPUs (one intra-op thread each, or with manual=False sharing
  TensorFlow's own threads: then only the one-device and the auto plan)."""
  import tensorflow as tf
  from models.lstm_lm import parts as model_parts
  from tfsys.placement import measure, placer
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
  words = [f"w{i}" for i in range(VOCAB)]
  c = config(model)
  parts = model_parts(c.model)
  out = {}
  # d: the auto placer, its measurement included, over the chunkings it may choose.
  t0 = time.perf_counter()
  devices, links = measure.measure_devices(["CPU:0", "CPU:1"], seconds=2.0)
  devices = measure.calibrate(c, VOCAB, devices, seconds=3.0)
  # (what training runs: placer.auto_plan, here given the figures measured as it measures them)
  plan = placer.auto_plan(c, VOCAB, ["CPU:0", "CPU:1"], devices=devices, links=links)
  placer_secs, chunks = time.perf_counter() - t0, plan.chunks
  plans = {"one device": ({p: ("CPU:0",) for p in parts}, 1)}
  if manual:
    plans.update({"round-robin": ({p: (f"CPU:{k % 2}",) for k, p in enumerate(parts)}, 1),
                  **{f"manual: {k}": v for k, v in manual_plans(parts).items()}})
  plans["auto"] = (None if plan.unplaced else plan.device_tuples(), chunks)
  measured = time_plans(model, words, plans, steps)
  for label, (assignment, k) in plans.items():
    assignment = plan.device_tuples() if label == "auto" else assignment
    out[label] = {"measured_ms": 1e3 * measured[label],
                  "predicted_ms": 1e3 * predicted(c, assignment, k, devices, links),
                  "plan": {p: "+".join(d) for p, d in assignment.items()}, "chunks": k}
  out["auto"].update(placer_secs=placer_secs, chosen=plan.chosen)
  out["devices"] = [{"name": d.name, "gflops": round(d.gflops, 1),
                     "pool_gflops": round(d.pool_gflops, 1), "launch_us": 1e6 * d.launch_secs,
                     "part_scale": {p: round(f, 2) for p, f in d.part_scale}}
                    for d in devices]
  return out


def child(worker: str, model: str, steps: int) -> dict:
  env = dict(os.environ)
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={worker}", f"--model={model}",
         f"--steps={steps}"]
  if worker == "split":
    env["TF_NUM_INTRAOP_THREADS"] = "1"
    cmd.append("--intra_op=1")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


_INTRA = flags.DEFINE_integer("intra_op", 0, "internal: intra-op threads of a worker")


def main(argv):
  del argv
  if _WORKER.value:
    import tensorflow as tf
    if _INTRA.value:
      tf.config.threading.set_intra_op_parallelism_threads(_INTRA.value)
    if _WORKER.value == "default":
      out = worker_default(_MODEL.value, _STEPS.value)
    else:
      out = worker_split(_MODEL.value, _STEPS.value, manual=_WORKER.value == "split")
    print(json.dumps(out))
    return
  from bench.common import background_busy
  print(f"machine busy with other work: {100 * background_busy():.0f}%")
  results = {}
  for model in ("char", "word"):
    first = child("default", model, _STEPS.value)["default"]
    r = child("split", model, _STEPS.value)
    shared = child("shared", model, _STEPS.value)
    # a0 before and after the others (the machine's speed drifts between processes): the mean
    last = child("default", model, _STEPS.value)["default"]
    r = {"default": {k: (first[k] + last[k]) / 2 for k in first}, **r}
    r["auto, 1 thread each"] = r.pop("auto")
    r["shared threads: one device"], r["auto"] = shared["one device"], shared["auto"]
    r["shared devices"] = shared["devices"]
    results[model] = r
    print(f"\n{CONFIGS[model]} (batch 20 x 35, vocabulary {VOCAB:,}); devices: "
          + ", ".join(f"{d['name']} {d['gflops']} GFLOP/s (pool {d['pool_gflops']})"
                      for d in r["devices"]))
    print(f"  {'plan':<34} {'measured ms':>11} {'predicted ms':>12} {'error':>7}")
    for label, v in r.items():
      if label.endswith("devices"):
        continue
      err = v["predicted_ms"] / v["measured_ms"] - 1
      print(f"  {label:<34} {v['measured_ms']:>11.1f} {v['predicted_ms']:>12.1f} {err:>+7.0%}"
            + (f"  {v['plan']} x{v['chunks']}" if label.startswith("auto") else ""))
    print("  part factors (time over FLOPs at the calibrated speed): "
          + ", ".join(f"{p} {f}" for p, f in r["devices"][0]["part_scale"].items()))
    for label in ("auto, 1 thread each", "auto"):
      print(f"  {label} placer: {r[label]['placer_secs']:.2f} s ({r[label]['chosen']})")

  def summary(r):
    manual = min((v["measured_ms"], k) for k, v in r.items() if k.startswith("manual"))
    plans = [k for k in r if not k.endswith("devices")]
    return {"default_step_ms": round(r["default"]["measured_ms"], 1),
            "one_device_step_ms": round(r["one device"]["measured_ms"], 1),
            "round_robin_step_ms": round(r["round-robin"]["measured_ms"], 1),
            "best_manual_step_ms": round(manual[0], 1), "best_manual_plan": manual[1],
            "auto_step_ms": round(r["auto"]["measured_ms"], 1),
            "auto_predicted_step_ms": round(r["auto"]["predicted_ms"], 1),
            "auto_1thread_step_ms": round(r["auto, 1 thread each"]["measured_ms"], 1),
            "auto_1thread_predicted_step_ms": round(r["auto, 1 thread each"]["predicted_ms"], 1),
            "placer_secs": round(max(r[k]["placer_secs"] for k in ("auto", "auto, 1 thread each")), 2),
            "max_prediction_error": round(max(abs(r[k]["predicted_ms"] / r[k]["measured_ms"] - 1)
                                              for k in plans), 3)}
  out = summary(results["char"])
  out["word"] = summary(results["word"])
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
