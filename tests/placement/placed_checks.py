"""Measures a placed LSTM LM against the unplaced one in a process of its own with 4 logical CPU
devices (TensorFlow fixes a process's devices when it starts, and the test process has started
its own). tests/placement/test_placement.py runs it once and asserts on the JSON it prints.

  python tests/placement/placed_checks.py  ->  last line: one JSON object
"""
import json
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import models  # noqa: E402
from configs import ptb_char_cnn_lstm, ptb_word_lstm  # noqa: E402
from models.sharded import ShardedTable, variables_of  # noqa: E402
from models.variables import DevicePlacement, parameters  # noqa: E402

WORDS = ["<unk>", "<eos>"] + [f"w{i}" for i in range(57)]   # 59: no K divides it evenly


def config(module, num_samples=0):
  c = module.get_config("smoke").model
  c.dropout = 0.3            # masks must match too: a pure function of (seed, step, replica)
  c.num_samples = num_samples
  return c


def batch(seed=0, rows=3, steps=6):
  ids = np.random.default_rng(seed).integers(0, len(WORDS), size=(rows, steps + 1))
  return {"inputs": tf.constant(ids[:, :-1], tf.int32), "targets": tf.constant(ids[:, 1:], tf.int32),
          "weights": tf.ones([rows, steps])}


def loss_and_grads(model, data, training=True):
  params = parameters(model)

  @tf.function
  def step(data):
    with tf.GradientTape() as tape:
      loss, _, _ = model.loss(data, model.initial_state(3), training=training, step=7, replica=0)
    return loss, tape.gradient(loss, variables_of(params))
  loss, grads = step(data)
  # Each parameter's gradient whole (a split table's shards' rows put back in order).
  whole, k = {}, 0
  for p in params:
    n = len(p.shards) if isinstance(p, ShardedTable) else 1
    whole[p.name.split(":")[0]] = np.concatenate(
        [tf.convert_to_tensor(g).numpy() for g in grads[k:k + n]], axis=0)
    k += n
  return float(loss), whole, step


def max_diff(a: dict, b: dict) -> float:
  assert sorted(a) == sorted(b), (sorted(a), sorted(b))
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def op_devices(step, data, parts) -> dict:
  """{part: {"forward": devices, "backward": devices}} of the ops of the traced step under the
  part's name scopes (models/sharded.py on_device). Variable reads are left
  out: TensorFlow runs a resource's reads on its device whatever the graph says (the variables'
  own devices are checked apart)."""
  graph = step.get_concrete_function(data).graph
  found = {p: {"forward": set(), "backward": set()} for p in parts}
  for op in graph.get_operations():
    if op.type in ("Placeholder", "ReadVariableOp"):
      continue
    scopes = op.name.split("/")[:-1]
    # The tape names a gradient op after its forward op, under gradient_tape/.
    phase = "backward" if scopes[:1] == ["gradient_tape"] else "forward"
    for p in parts:
      # (a scope entered twice in one trace gets a suffix: softmax_1)
      if any(s in (p, p + "_grad") or s.startswith(p + "_") and s[len(p) + 1:].isdigit()
             for s in scopes):
        found[p][phase].add(op.device.split("device:")[-1])
  return {p: {k: sorted(v) for k, v in d.items()} for p, d in found.items()}


def main():
  cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 4)
  out = {}
  data = batch()

  # 1. Each part on its own device: variables, forward and backward ops; same loss, gradients.
  rules = {"char_cnn": ("CPU:1",), "lstm0": ("CPU:2",), "lstm1": ("CPU:3",), "softmax": ("CPU:0",)}
  c = config(ptb_char_cnn_lstm)
  plain = models.build(c, WORDS, seed=3)
  placed = models.build(c, WORDS, seed=3, placement=DevicePlacement(rules))
  l0, g0, _ = loss_and_grads(plain, data)
  l1, g1, step = loss_and_grads(placed, data)
  out["whole"] = {"loss": [l0, l1], "grad_diff": max_diff(g0, g1),
                  "variable_devices": {v.name.split(":")[0]: v.device.split("device:")[-1]
                                       for v in placed.trainable_variables},
                  "op_devices": op_devices(step, data, sorted(rules))}

  # ... and pipelined: the time steps cut into 3 chunks (of 6: 2 each), the layers on different
  # devices, the full softmax chunk by chunk; dropout masks cut from the whole step's.
  chunked = models.build(c, WORDS, seed=3, placement=DevicePlacement(rules, chunks=3))
  l2, g2, step = loss_and_grads(chunked, data)
  out["chunked"] = {"loss": [l0, l2], "grad_diff": max_diff(g0, g2),
                    "op_devices": op_devices(step, data, sorted(rules)),
                    "eval_loss": [float(plain.loss(data, plain.initial_state(3), False)[0]),
                                  float(chunked.loss(data, chunked.initial_state(3), False)[0])]}

  # 2. Tables split by rows: the word embedding over 2 devices, the softmax over 3; full and
  # sampled softmax; then a K=3 checkpoint restored into K'=2 and into an unsplit model.
  split = {"embedding": ("CPU:0", "CPU:1"), "lstm0": ("CPU:2",), "lstm1": ("CPU:2",),
           "softmax": ("CPU:1", "CPU:2", "CPU:3")}
  for samples in (0, 16):
    c = config(ptb_word_lstm, samples)
    plain = models.build(c, WORDS, seed=5)
    sharded = models.build(c, WORDS, seed=5, placement=DevicePlacement(split))
    l0, g0, _ = loss_and_grads(plain, data)
    l1, g1, _ = loss_and_grads(sharded, data)
    out[f"sharded_{samples}"] = {
        "loss": [l0, l1], "grad_diff": max_diff(g0, g1),
        "shard_devices": [v.device.split("device:")[-1]
                          for v in sharded.params["softmax_w"].shards],
        "shard_rows": [int(v.shape[0]) for v in sharded.params["softmax_w"].shards],
        "logits_diff": float(tf.reduce_max(tf.abs(
            plain.logits(data["inputs"], plain.initial_state(3))[0]
            - sharded.logits(data["inputs"], sharded.initial_state(3))[0])))}

  c = config(ptb_word_lstm)
  three = models.build(c, WORDS, seed=5, placement=DevicePlacement(split))
  for p in parameters(three):   # values no fresh model has
    for v in variables_of([p]):
      v.assign(v + tf.random.stateless_normal(v.shape, [1, len(v.name)]))
  directory = tempfile.mkdtemp()
  path = tf.train.Checkpoint(model=three).write(os.path.join(directory, "ckpt"))
  two = models.build(c, WORDS, seed=9, placement=DevicePlacement(
      {**split, "softmax": ("CPU:3", "CPU:0")}))
  whole = models.build(c, WORDS, seed=9)
  tf.train.Checkpoint(model=two).read(path).assert_consumed()
  tf.train.Checkpoint(model=whole).read(path).assert_consumed()
  value = lambda p: (p.value() if isinstance(p, ShardedTable) else tf.convert_to_tensor(p)).numpy()
  saved = {p.name.split(":")[0]: value(p) for p in parameters(three)}
  out["reshard"] = {
      "into_2": max_diff(saved, {p.name.split(":")[0]: value(p) for p in parameters(two)}),
      "into_whole": max_diff(saved, {p.name.split(":")[0]: value(p) for p in parameters(whole)}),
      "shards_2": [int(v.shape[0]) for v in two.params["softmax_w"].shards]}
  # ... and back: the unsplit model's checkpoint into 3 shards.
  path = tf.train.Checkpoint(model=whole).write(os.path.join(directory, "whole"))
  again = models.build(c, WORDS, seed=11, placement=DevicePlacement(split))
  tf.train.Checkpoint(model=again).read(path).assert_consumed()
  out["reshard"]["whole_into_3"] = max_diff(
      saved, {p.name.split(":")[0]: value(p) for p in parameters(again)})
  print(json.dumps(out))


if __name__ == "__main__":
  main()
