"""Placement rules and row-sharded tables: where parts land, and that placing changes no result.

The model checks run in a process with 4 logical CPU devices (placed_checks.py); the rules are
pure; the scripts run end to end (a sharded run's SavedModel; two multi_worker processes).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import logging

from tfsys.errors import UserError
from tfsys.placement import placer, rules

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def checks():
  out = subprocess.run([sys.executable, os.path.join(HERE, "placed_checks.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the model, placed (4 logical CPUs) ------------------------------------------------------
@pytest.mark.kernels
def test_each_part_variables_and_ops_forward_and_backward_on_its_device(checks):
  whole = checks["whole"]
  want = {"char_cnn": "CPU:1", "lstm0": "CPU:2", "lstm1": "CPU:3", "softmax": "CPU:0"}
  for name, device in whole["variable_devices"].items():
    part = "softmax" if name.startswith("softmax") else (
        name.split("_")[0] if name.startswith("lstm") else "char_cnn")
    assert device == want[part], (name, device)
  for part, device in want.items():
    ops = whole["op_devices"][part]
    # Without the custom gradient the backward ops would have no device (the default one).
    assert ops == {"forward": [device], "backward": [device]}, (part, ops)


@pytest.mark.kernels
def test_placed_loss_and_gradients_equal_the_unplaced_model(checks):
  loss = checks["whole"]["loss"]
  np.testing.assert_allclose(loss[1], loss[0], rtol=1e-6)
  assert checks["whole"]["grad_diff"] < 1e-6


@pytest.mark.kernels
def test_pipelined_chunks_give_the_unchunked_loss_and_gradients_on_the_same_devices(checks):
  c = checks["chunked"]
  np.testing.assert_allclose(c["loss"][1], c["loss"][0], rtol=1e-6)
  np.testing.assert_allclose(c["eval_loss"][1], c["eval_loss"][0], rtol=1e-6)
  assert c["grad_diff"] < 1e-6
  assert c["op_devices"] == checks["whole"]["op_devices"]


@pytest.mark.kernels
@pytest.mark.parametrize("samples", [0, 16])
def test_split_tables_give_the_unsplit_lookups_softmax_and_gradients(checks, samples):
  c = checks[f"sharded_{samples}"]
  np.testing.assert_allclose(c["loss"][1], c["loss"][0], rtol=1e-6)
  assert c["grad_diff"] < 1e-6        # the shards' row gradients, put back in order
  assert c["logits_diff"] < 1e-5      # the full softmax's columns computed shard by shard
  assert c["shard_devices"] == ["CPU:1", "CPU:2", "CPU:3"]
  assert c["shard_rows"] == [20, 20, 19]   # TensorFlow's "div" partitioning of 59 rows


def test_a_checkpoint_of_k_shards_restores_into_k_prime_and_into_an_unsplit_model(checks):
  r = checks["reshard"]
  assert r["shards_2"] == [30, 29]
  assert r["into_2"] == 0.0 and r["into_whole"] == 0.0 and r["whole_into_3"] == 0.0


# ---- rules -----------------------------------------------------------------------------------
PARTS = ["char_cnn", "lstm0", "lstm1", "softmax"]


def test_rules_parse_in_order_with_split_devices():
  got = rules.parse("char_cnn|softmax=cpu:0, lstm.*=/device:GPU:1, softmax=CPU:0+CPU:1")
  assert got == [rules.Rule("char_cnn|softmax", ("CPU:0",)), rules.Rule("lstm.*", ("GPU:1",)),
                 rules.Rule("softmax", ("CPU:0", "CPU:1"))]


def test_overlapping_rules_first_match_wins_and_the_rest_take_the_default():
  got = rules.assign(PARTS, rules.parse("lstm0=CPU:1, lstm.*=CPU:2, softmax=CPU:0+CPU:3"),
                     "CPU:0")
  assert got == {"char_cnn": ("CPU:0",), "lstm0": ("CPU:1",), "lstm1": ("CPU:2",),
                 "softmax": ("CPU:0", "CPU:3")}
  # A pattern matches a whole part name: "lstm" alone is no rule for lstm0.
  assert rules.assign(PARTS, rules.parse("lstm=CPU:1"), "CPU:0")["lstm0"] == ("CPU:0",)


def test_a_pattern_that_matches_no_part_is_a_warning_naming_it(monkeypatch):
  said = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: said.append(msg % a))
  rules.assign(PARTS, rules.parse("lstm0=CPU:1, decoder.*=CPU:2"), "CPU:0")
  assert len(said) == 1 and "'decoder.*'" in said[0] and "lstm0" in said[0]


def test_a_device_the_host_lacks_is_an_error_listing_the_devices_there_are():
  with pytest.raises(UserError, match=r"lstm1 on GPU:0, which this host does not have; its "
                                      r"devices: CPU:0, CPU:1"):
    rules.check_devices(rules.assign(PARTS, rules.parse("lstm1=GPU:0"), "CPU:0"),
                        ["CPU:0", "CPU:1"])


@pytest.mark.parametrize("text,message", [
    ("lstm0", "not pattern=DEVICE"), ("lstm0=", "not pattern=DEVICE"),
    ("lstm(=CPU:0", "not a regular expression"), ("lstm0=GPU", "not a device name"),
    ("softmax=CPU:0+CPU:0", "names a device twice")])
def test_bad_rules_are_one_line_errors(text, message):
  with pytest.raises(UserError, match=message):
    rules.parse(text)


def test_mode_follows_the_rules_and_rejects_unknown_modes():
  import ml_collections
  c = ml_collections.ConfigDict({"placement": {"mode": "none", "rules": "", "default": "CPU:0"}})
  assert placer.mode(c) == "none"
  c.placement.rules = "lstm0=CPU:1"
  assert placer.mode(c) == "rules"
  c.placement.mode = "greedy"
  with pytest.raises(UserError, match="placement.mode must be one of none, rules, auto"):
    placer.mode(c)
  assert placer.mode(ml_collections.ConfigDict({"model": {}})) == "none"   # configs before it


def test_placement_under_a_backend_that_cannot_take_it_is_refused():
  from configs import common
  from tfsys.distribute.backends import make_backend
  c = common.base_config().distribute
  c.backend = "mirrored"
  with pytest.raises(UserError, match="mirrored makes one replica per device"):
    make_backend(c, placed=True)


def test_a_model_without_parts_cannot_be_placed():
  from configs import ptb_vae
  import models
  c = ptb_vae.get_config("smoke")
  with pytest.raises(UserError, match="sentence_vae model does not declare parts"):
    placer.parts(models.kind(c.model), c.model)


# ---- the scripts -----------------------------------------------------------------------------
def _script(*args, status=0):
  proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                        cwd=ROOT)
  assert proc.returncode == status, (proc.stdout + proc.stderr)[-3000:]
  return proc.stdout + proc.stderr


def test_place_prints_the_billion_word_plan_for_a_described_cluster_and_refuses_a_small_one():
  big = ["scripts/place.py", "--config=configs/lm1b_big_lstm_cnn.py", "--vocab_size=793471",
         "--config.placement.mode=auto"]
  out = _script(*big, "--devices=CPU:0=64GiB@100,GPU:0=8GiB@15000,GPU:1=8GiB@15000")
  assert "vocabulary 793,471, auto placement on CPU:0, GPU:0, GPU:1" in out
  for part in ("char_cnn", "lstm0", "lstm1", "softmax"):
    assert f"\n{part} " in out
  assert "predicted step" in out and "as rules: --config.placement.rules=" in out
  # 813M softmax parameters and their Adagrad slots (6.06 GiB) fit no 8 GiB GPU beside the
  # rest, so the plan must keep every device within its memory.
  for line in out.splitlines():
    if line.startswith(("CPU:0 ", "GPU:0 ", "GPU:1 ")):
      used, limit = float(line.split()[-5]), float(line.split()[-2])
      assert used <= limit, line
  refused = _script(*big, "--devices=CPU:0=4GiB@100,GPU:0=4GiB@15000", status=2)
  errors = [line for line in refused.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "short by 3.01 GiB" in errors[0], refused[-2000:]
  assert "Traceback" not in refused


def _train_auto(workdir: str, devices: str) -> tuple:
  """A 2-step auto-placed run on described devices (placement.devices, not measured: the plan
  is the cost model's alone, the same on every machine): its output and placement.json."""
  out = _script("scripts/train.py", "--config=configs/ptb_word_lstm.py:smoke",
                f"--workdir={workdir}", "--config.placement.mode=auto",
                f"--config.placement.devices={devices}",
                "--config.train.num_steps=2", "--config.eval.max_tokens=100")
  return out, json.load(open(os.path.join(workdir, "placement.json")))


def test_auto_placement_trains_and_keeps_its_plan_in_the_workdir(tmp_path):
  # Two slow devices: pipelining the layers pays.
  out, plan = _train_auto(str(tmp_path / "run"), "CPU:0=4GiB@1,CPU:1=4GiB@1")
  assert "the auto placer's plan" in out and "predicted step" in out
  assert plan["mode"] == "auto" and plan["devices"] == ["CPU:0", "CPU:1"]
  assert plan["predicted_step_secs"] > 0
  # the chunks of the unroll: the placer's choice among chunk_choices, recorded with the plan
  from configs import ptb_word_lstm
  assert plan["chunks"] == plan["plan"]["chunks"]
  assert plan["chunks"] in placer.chunk_choices(ptb_word_lstm.get_config("smoke"))[1:]
  assert set(plan["parts"]) == {"embedding", "lstm0", "lstm1", "softmax"}
  assert {d for p in plan["parts"].values() for d in p["devices"]} == {"CPU:0", "CPU:1"}
  assert not plan["unplaced"] and "placement: none" not in out


def test_place_says_when_the_auto_placer_would_place_nothing():
  out = _script("scripts/place.py", "--config=configs/ptb_word_lstm.py", "--vocab_size=10000",
                "--config.placement.mode=auto", "--devices=CPU:0=4GiB@100")
  assert "nothing to place: run it unplaced (--config.placement.mode=none)" in out
  assert "as rules:" not in out


def test_auto_placement_places_nothing_where_no_plan_is_predicted_faster(tmp_path):
  workdir = str(tmp_path / "run")
  out, plan = _train_auto(workdir, "CPU:0=4GiB@1")
  assert plan["unplaced"] and plan["plan"]["unplaced"] and plan["chunks"] == 1
  assert "placement: none (unplaced: " in out and "nothing is placed" in out
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 2


def test_described_devices_must_be_the_hosts():
  from configs import ptb_word_lstm
  config = ptb_word_lstm.get_config()
  config.placement.devices = "CPU:0=4GiB@100"   # without mode=auto: refused
  with pytest.raises(UserError, match="placement.devices describes the devices for the auto"):
    placer.mode(config)
  config.placement.mode = "auto"
  assert placer.mode(config) == "auto"
  config = ptb_word_lstm.get_config()
  assert placer.described_devices(config, ["CPU:0"]) == (None, None)
  config.placement.devices = "CPU:0=4GiB@100,GPU:0=16GiB@15000"
  config.placement.mode = "auto"
  with pytest.raises(UserError, match="describes GPU:0, which this host does not have; its "
                                      "devices: CPU:0, CPU:1"):
    placer.described_devices(config, ["CPU:0", "CPU:1"])
  devices, links = placer.described_devices(config, ["CPU:0", "GPU:0"])
  assert [d.name for d in devices] == ["CPU:0", "GPU:0"] and links is not None


def test_rules_that_overfill_a_device_are_refused_naming_it_and_the_shortfall(monkeypatch):
  from configs import ptb_word_lstm
  from tfsys.placement import measure
  config = ptb_word_lstm.get_config()
  every = {p: ("CPU:0",) for p in ("embedding", "lstm0", "lstm1", "softmax")}
  monkeypatch.setattr(measure, "_host_available_bytes", lambda: 2 << 30)
  placer.check_memory(config, 10_000, every, ["CPU:0", "CPU:1"])   # 1 GiB each: it fits
  monkeypatch.setattr(measure, "_host_available_bytes", lambda: 16 << 20)   # 8 MiB each
  with pytest.raises(UserError, match=r"CPU:0 holds embedding, lstm0, lstm1, softmax .* but "
                                      r"has 0\.01 GiB; short by 0\.\d\d GiB"):
    placer.check_memory(config, 10_000, every, ["CPU:0", "CPU:1"])


def test_agree_carries_worker_0s_assignment_and_chunks():
  """multi_worker's agreement, encoded as device bitmasks and the chunk count and all-reduced
  (here under the default strategy: worker 0 alone)."""
  import tensorflow as tf
  plan = {"embedding": ("CPU:0",), "lstm0": ("CPU:1",), "lstm1": ("CPU:0",),
          "softmax": ("CPU:0", "CPU:1")}
  assert placer.agree(tf.distribute.get_strategy(), plan, ["CPU:0", "CPU:1"], 5) == (plan, 5)
