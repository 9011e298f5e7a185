"""The auto placer (issue 16, item 4) on synthetic graphs and device speeds with known optimal
plans, and the LSTM LM's step graph from shapes alone. No assertion depends on timing."""
import json

import numpy as np
import pytest

import configs.lm1b_big_lstm_cnn
import configs.ptb_char_cnn_lstm
import configs.ptb_word_lstm
from configs import common
from models.lstm_lm import variable_shapes
from tfsys.errors import UserError
from tfsys.placement import graph as graph_lib
from tfsys.placement.auto import PlacementError, parse_devices, place, predict
from tfsys.placement.graph import Node, PartCost, StepGraph, lm_graph, slots_per_param
from tfsys.placement.schedule import Device, Link, Links, simulate

GIB = 2**30


def _devices(n=2, gflops=10.0, memory=GIB, **kw):
  return [Device(f"CPU:{k}", "CPU", gflops, memory, 0.0, **kw) for k in range(n)]


def _links(bandwidth, latency=0.0):
  return Links(Link(bandwidth, latency))


def _parts(*names, nbytes=1000):
  return [PartCost(p, nbytes) for p in names]


def _pipeline(chunks, layers=2, flops=4e9, out_bytes=1e6):
  """`layers` layers over `chunks` chunks of time: (k, j) waits for (k-1, j) and (k, j-1)."""
  nodes = []
  for j in range(chunks):
    for k in range(layers):
      deps = ([f"l{k - 1}/{j}"] if k else []) + ([f"l{k}/{j - 1}"] if j else [])
      nodes.append(Node(f"l{k}/{j}", f"l{k}", flops / chunks, out_bytes / chunks, tuple(deps)))
  return StepGraph(nodes, _parts(*[f"l{k}" for k in range(layers)]))


def _one_device_best(graph, devices, links):
  return min(predict(graph, {p: d.name for p in graph.parts}, devices, links).step_secs
             for d in devices)


# ---- the simulation ----------------------------------------------------------------------------
def test_simulation_counts_compute_transfer_and_launch_exactly():
  g = StepGraph([Node("a", "x", 2e9, 1e9), Node("b", "y", 1e9, 0, ("a",), ops=10)],
                _parts("x", "y"))
  devices = [Device("CPU:0", "CPU", 10.0, GIB, 1e-3), Device("GPU:0", "GPU", 20.0, GIB, 1e-3)]
  p = simulate(g, {"x": "CPU:0", "y": "GPU:0"}, devices, _links(1e9, 0.01))
  # 0.2 s + 1 launch, then 0.01 s + 1 s of transfer, then 0.05 s + 10 launches
  assert p.step_secs == pytest.approx(0.201 + 1.01 + 0.06)
  assert p.busy_secs == pytest.approx({"CPU:0": 0.201, "GPU:0": 0.06})
  assert p.transfer_bytes == 10**9
  assert p.critical_path == ["a@CPU:0", "send a CPU:0->GPU:0", "b@GPU:0"]
  assert simulate(g, {"x": "GPU:0", "y": "GPU:0"}, devices, _links(1e9)).step_secs == \
      pytest.approx(0.101 + 0.06)


def test_a_row_sharded_part_splits_its_work_and_bytes():
  g = StepGraph([Node("t", "table", 8e9, 0)], [PartCost("table", 3 * GIB, shardable=True)])
  devices = _devices(3, memory=4 * GIB)
  p = simulate(g, {"table": ("CPU:0", "CPU:2")}, devices, _links(1e9))
  assert p.step_secs == pytest.approx(0.4)
  assert p.memory_bytes == {"CPU:0": 1.5 * GIB, "CPU:1": 0, "CPU:2": 1.5 * GIB}


def test_devices_of_one_pool_share_its_speed():
  # Two logical CPUs on one core: both busy, each runs at half speed (issue 16's 2-core probe).
  g = StepGraph([Node("a", "x", 1e9, 0), Node("b", "y", 1e9, 0)], _parts("x", "y"))
  shared = _devices(2, pool="host", pool_gflops=10.0)
  assert simulate(g, {"x": "CPU:0", "y": "CPU:1"}, shared, _links(1e9)).step_secs == \
      pytest.approx(0.2)
  assert simulate(g, {"x": "CPU:0", "y": "CPU:1"}, _devices(2), _links(1e9)).step_secs == \
      pytest.approx(0.1)



def test_a_part_factor_scales_that_parts_flops_and_nothing_else():
  g = StepGraph([Node("a", "x", 1e9, 0), Node("b", "y", 1e9, 0, ("a",), ops=10)],
                _parts("x", "y"))
  device = Device("CPU:0", "CPU", 10.0, GIB, 1e-3, part_scale=(("y", 3.0),))
  # x: 0.1 s + 1 launch; y: 3 x 0.1 s + 10 launches (a launch is not scaled)
  assert simulate(g, {"x": "CPU:0", "y": "CPU:0"}, [device], _links(1e9)).step_secs == \
      pytest.approx(0.101 + 0.31)


def test_part_factors_share_the_measured_step_as_the_profile_shares_the_ops():
  from tfsys.placement.measure import part_factors
  g = StepGraph([Node("a", "x", 1e9, 0), Node("b", "y", 1e9, 0, ("a",), ops=10)],
                _parts("x", "y"))
  device = Device("CPU:0", "CPU", 10.0, GIB, 1e-3)
  # 0.33 s measured; the profile gives x twice y's op time, and 5 s to no part (spread alike):
  # x 0.22 s, y 0.11 s; less their launches (1 and 10 ms), over 0.1 s of FLOPs each
  factors = dict(part_factors(g, device, 0.33, {"x": 2.0, "y": 1.0, "": 5.0}))
  assert factors == pytest.approx({"x": 2.19, "y": 1.0})
  scaled = Device("CPU:0", "CPU", 10.0, GIB, 1e-3, part_scale=tuple(factors.items()))
  assert simulate(g, {"x": "CPU:0", "y": "CPU:0"}, [scaled], _links(1e9)).step_secs == \
      pytest.approx(0.33)
  assert part_factors(g, device, 0.33, {"": 1.0}) == ()   # nothing attributed: no factors


def test_a_profiles_op_time_is_credited_to_the_part_its_scopes_name():
  from tensorflow.tsl.profiler.protobuf import xplane_pb2
  from tfsys.placement.measure import op_secs_by_part
  space = xplane_pb2.XSpace()
  plane = space.planes.add(name="/host:CPU")
  events = {"lstm0/while/MatMul:_MklMatMul": 3, "lstm0_1/Sigmoid:Sigmoid": 1,
            "gradient_tape/lstm1/MatMul:MatMul": 2, "softmax_grad/mul:Mul": 4,
            "char_cnn/conv:Conv2D": 5, "mul_9:Mul": 6,
            "lstm1/while:While": 100, "ExecutorState::Process": 100}   # not ops of their own
  line = plane.lines.add(name="tf_Compute/1")
  for k, (name, ms) in enumerate(events.items(), start=1):
    plane.event_metadata[k].id, plane.event_metadata[k].name = k, name
    line.events.add(metadata_id=k, duration_ps=int(ms * 1e9))
  plane.lines.add(name="python").events.add(metadata_id=1, duration_ps=10**12)  # not an op's
  secs = op_secs_by_part(space.SerializeToString(), ["char_cnn", "lstm0", "lstm1", "softmax"])
  assert secs == pytest.approx({"char_cnn": 5e-3, "lstm0": 4e-3, "lstm1": 2e-3,
                                "softmax": 4e-3, "": 6e-3})

# ---- the placer on graphs with known optimal plans ----------------------------------------------
def test_a_chain_stays_on_one_device_when_transfers_are_expensive():
  nodes = [Node("a", "a", 1e9, 1e8), Node("b", "b", 1e9, 1e8, ("a",)),
           Node("c", "c", 1e9, 1e8, ("b",))]
  g = StepGraph(nodes, _parts("a", "b", "c"))
  devices = _devices(2)
  devices[1] = Device("CPU:1", "CPU", 12.0, GIB, 0.0)   # a bit faster, not worth a transfer
  plan = place(g, devices, _links(1e9, 1e-3))
  assert len(set(plan.assignment.values())) == 1
  assert plan.step_secs == pytest.approx(3 * 1e9 / 12e9)


def test_parallel_branches_split_when_transfers_are_cheap():
  nodes = [Node("in", "in", 1e6, 1e3), Node("left", "left", 4e9, 1e3, ("in",)),
           Node("right", "right", 4e9, 1e3, ("in",)), Node("out", "out", 1e6, 0, ("left", "right"))]
  g = StepGraph(nodes, _parts("in", "left", "right", "out"))
  links = _links(10e9, 1e-5)
  plan = place(g, _devices(2), links)
  assert plan.assignment["left"] != plan.assignment["right"]
  assert plan.step_secs < 0.55 * _one_device_best(g, _devices(2), links)


def test_a_pipeline_of_layers_splits_over_chunks_and_not_without():
  # The whitepaper's Figure 8: layers over devices pipeline the chunks of the time loop.
  links = _links(10e9, 1e-5)
  plan = place(_pipeline(8), _devices(2), links)
  assert plan.assignment["l0"] != plan.assignment["l1"]
  assert plan.step_secs < 0.6 * _one_device_best(_pipeline(8), _devices(2), links)
  # One chunk: layer 1 waits for all of layer 0, so a second device only adds a transfer.
  plan = place(_pipeline(1), _devices(2), links)
  assert plan.assignment["l0"] == plan.assignment["l1"]


def test_a_pipeline_stays_on_one_device_when_the_devices_share_one_core():
  plan = place(_pipeline(8), _devices(2, pool="host", pool_gflops=10.0), _links(10e9, 1e-5))
  assert plan.assignment["l0"] == plan.assignment["l1"]


def test_many_small_pieces_lose_to_their_transfers():
  # 35 chunks of 1 ms and a launch of 0.5 ms each (105 ms on one device); every piece sent
  # holds the link 5 ms, so 35 of them (175 ms) cost more than the pipeline saves.
  devices = [Device(f"CPU:{k}", "CPU", 10.0, GIB, 5e-4) for k in range(2)]
  plan = place(_pipeline(35, flops=0.35e9), devices, _links(10e9, 5e-3))
  assert plan.assignment["l0"] == plan.assignment["l1"]
  assert plan.step_secs == pytest.approx(70 * 1.5e-3)
  plan = place(_pipeline(35, flops=0.35e9), devices, _links(10e9, 1e-4))
  assert plan.assignment["l0"] != plan.assignment["l1"]


def test_the_auto_plan_is_never_slower_than_the_best_one_device_plan():
  rng = np.random.default_rng(0)
  for _ in range(25):
    nodes, parts = [], [f"p{k}" for k in range(int(rng.integers(2, 6)))]
    for i in range(int(rng.integers(3, 15))):
      deps = tuple(f"n{j}" for j in range(i) if rng.random() < 0.3)
      nodes.append(Node(f"n{i}", parts[int(rng.integers(len(parts)))], rng.uniform(0.1, 5) * 1e9,
                        rng.uniform(0, 1e9), deps, int(rng.integers(1, 50))))
    devices = [Device(f"GPU:{k}", "GPU", rng.uniform(5, 50), 64 * GIB, rng.uniform(0, 1e-3))
               for k in range(int(rng.integers(2, 5)))]
    g = StepGraph(nodes, _parts(*parts))
    links = _links(rng.uniform(1e8, 1e11), rng.uniform(0, 1e-2))
    plan = place(g, devices, links)
    assert plan.step_secs <= _one_device_best(g, devices, links) * (1 + 1e-9)


# ---- memory ------------------------------------------------------------------------------------
def test_a_part_too_large_for_every_device_is_refused_naming_the_shortfall():
  g = StepGraph([Node("a", "small", 1e9, 0), Node("b", "big", 1e9, 0, ("a",))],
                [PartCost("small", GIB // 2), PartCost("big", GIB, GIB // 2)])
  devices = [Device("GPU:0", "GPU", 10.0, GIB, 0.0), Device("GPU:1", "GPU", 10.0, GIB, 0.0)]
  with pytest.raises(PlacementError, match=r"the big \(1.50 GiB with its slots and activations\) "
                     r"does not fit: GPU:\d has 1.00 GiB free; short by 0.50 GiB"):
    place(g, devices, _links(1e9))
  larger = StepGraph(g.nodes, [PartCost("small", GIB), PartCost("big", GIB, GIB // 2)])
  with pytest.raises(PlacementError, match=r"the model's parts need 2.50 GiB .* devices hold "
                     r"2.00 GiB in all \(GPU:0 1.00 GiB, GPU:1 1.00 GiB\); short by 0.50 GiB"):
    place(larger, devices, _links(1e9))


def test_a_table_too_large_for_one_device_is_split_by_rows():
  g = StepGraph([Node("a", "lstm", 1e9, 1e6), Node("b", "softmax", 1e9, 0, ("a",))],
                [PartCost("lstm", GIB // 4), PartCost("softmax", GIB, GIB // 2, shardable=True)])
  devices = [Device(f"GPU:{k}", "GPU", 10.0, GIB, 0.0) for k in range(3)]
  plan = place(g, devices, _links(10e9))
  assert len(plan.devices_of("softmax")) >= 2
  for d in devices:
    assert plan.prediction.memory_bytes[d.name] <= d.memory_bytes
  with pytest.raises(PlacementError, match=r"GPU:1 holds lstm, softmax .* short by 0.75 GiB"):
    predict(g, {"lstm": "GPU:1", "softmax": ("GPU:1",)}, devices, _links(10e9))


# ---- the LSTM LM's step graph ------------------------------------------------------------------
def _expected_param_bytes(config, vocab):
  groups = {}
  for name, shape in variable_shapes(config.model, vocab).items():
    part = ("softmax" if name.startswith("softmax") else name.split("_")[0]
            if name.startswith("lstm") else "embedding" if name == "word_embedding" else "char_cnn")
    groups[part] = groups.get(part, 0) + 4 * int(np.prod(shape))
  return groups


@pytest.mark.parametrize("module,input_part", [(configs.ptb_char_cnn_lstm, "char_cnn"),
                                               (configs.ptb_word_lstm, "embedding")])
def test_lm_graph_parts_agree_with_the_declared_variables(module, input_part):
  config = module.get_config()
  g = graph_lib.config_graph(config, 10000, chunks=5)
  assert list(g.parts) == [input_part, "lstm0", "lstm1", "softmax"]
  assert {p: c.param_bytes for p, c in g.parts.items()} == _expected_param_bytes(config, 10000)
  assert all(c.slot_bytes == 0 for c in g.parts.values())   # plain SGD
  assert len(g.nodes) == 2 + 2 * 5 * 3                       # input, then 3 parts x 5 chunks x 2
  lstm = [n for n in g.nodes if n.name == "lstm1/fwd/0"][0]
  units = config.model.lstm_units
  assert lstm.flops >= 2 * 20 * 7 * (units + units) * 4 * units   # x W_x and h W_h, 7 steps
  assert lstm.out_bytes == 4 * 20 * 7 * units
  plan = place(g, parse_devices("CPU:0=8GiB@100,CPU:1=8GiB@100"))
  assert plan.placer_secs < 10


def test_the_billion_word_model_is_placed_from_shapes_alone():
  config = configs.lm1b_big_lstm_cnn.get_config()
  assert config.model.projection == 1024 and config.optim.name == "adagrad"
  g = graph_lib.config_graph(config, 793471, chunks=20)
  softmax = g.parts["softmax"]
  assert softmax.param_bytes == 4 * (793471 * 1024 + 793471)
  assert softmax.slot_bytes == softmax.param_bytes and softmax.shardable
  devices = parse_devices("CPU:0=64GiB@100," + ",".join(f"GPU:{k}=4GiB@10000" for k in range(4)))
  plan = place(g, devices)
  assert plan.placer_secs < 10
  on = plan.devices_of("softmax")
  assert on == ("CPU:0",) or len(on) > 1   # 6.1 GiB: never whole on a 4 GiB GPU
  for d in devices:
    assert plan.prediction.memory_bytes[d.name] <= d.memory_bytes
  assert plan.step_secs < predict(g, {p: "CPU:0" for p in g.parts}, devices).step_secs / 5
  json.dumps(plan.to_json())
  assert "softmax" in plan.table() and "GPU:3" in plan.table()
  with pytest.raises(PlacementError, match=r"short by \d+\.\d\d GiB"):
    place(g, parse_devices("CPU:0=4GiB@100,GPU:0=2GiB@10000,GPU:1=2GiB@10000"))
  with pytest.raises(PlacementError, match=r"the softmax .* does not fit even split by rows over "
                     r"CPU:0, GPU:1: each shard needs 3.09 GiB and GPU:1 has 2.87 GiB free after "
                     r"lstm0; short by 0.22 GiB"):
    place(g, parse_devices("CPU:0=4GiB@100,GPU:0=4GiB@10000,GPU:1=4GiB@10000"),
          fixed={"char_cnn": "GPU:0", "lstm0": "GPU:1", "lstm1": "CPU:0"})


# ---- small pieces ------------------------------------------------------------------------------
def test_parse_devices():
  cpu, gpu = parse_devices("CPU:0=64GiB@100, /device:gpu:0=80GB@60000")
  assert (cpu.name, cpu.kind, cpu.memory_bytes, cpu.gflops) == ("CPU:0", "CPU", 64 * GIB, 100.0)
  assert (gpu.name, gpu.kind, gpu.memory_bytes, gpu.gflops) == ("GPU:0", "GPU", 80e9, 60000.0)
  for bad in ("CPU:0=64GiB", "CPU:0=64XB@1", "CPU:0=0GiB@1", "CPU:0=1GiB@1,CPU:0=1GiB@1", ""):
    with pytest.raises(UserError, match="--devices"):
      parse_devices(bad)


def test_slots_per_param():
  optim = common.base_config().optim
  for name, momentum, slots in (("sgd", 0.0, 0), ("sgd", 0.9, 1), ("adagrad", 0.0, 1),
                                ("adam", 0.0, 2)):
    optim.name, optim.momentum = name, momentum
    assert slots_per_param(optim) == slots
  optim.name = "lamb"
  with pytest.raises(UserError, match="optim.name"):
    slots_per_param(optim)


def test_a_plan_names_its_parts_and_a_graph_is_checked():
  with pytest.raises(UserError, match="not among the devices: CPU:0, CPU:1"):
    predict(_pipeline(2), {"l0": "GPU:0", "l1": "CPU:0"}, _devices(2), _links(1e9))
  with pytest.raises(UserError, match="no device for the part 'l1'"):
    predict(_pipeline(2), {"l0": "CPU:0"}, _devices(2), _links(1e9))
  with pytest.raises(ValueError, match="topological"):
    StepGraph([Node("b", "x", 1, 0, ("a",)), Node("a", "x", 1, 0)], _parts("x"))
  with pytest.raises(UserError, match="chunks"):
    lm_graph(configs.ptb_word_lstm.get_config().model, 100, 2, 5, chunks=6)


def test_measure_devices_gives_positive_figures():
  from tfsys.placement.measure import measure_devices
  (cpu,), links = measure_devices(["/device:CPU:0"], seconds=0.3)
  assert cpu.name == "CPU:0" and cpu.gflops > 0 and cpu.memory_bytes > 0
  assert cpu.launch_secs > 0 and isinstance(links, Links)


def test_calibration_gives_every_part_of_a_real_step_its_factor():
  # A real step under TensorFlow's profiler: its ops' names still say whose they are.
  from tfsys.placement.measure import calibrate, measure_devices
  config = configs.ptb_word_lstm.get_config("smoke")
  devices, _ = measure_devices(["CPU:0"], seconds=0.3)
  (cpu,) = calibrate(config, 200, devices, seconds=0.5)
  factors = dict(cpu.part_scale)
  assert {"lstm0", "lstm1", "softmax"} <= set(factors) and min(factors.values()) > 0
  assert cpu.gflops > 0


def test_the_auto_placer_picks_the_chunks_of_the_unroll():
  from tfsys.placement import placer
  config = configs.ptb_word_lstm.get_config()                 # unroll 35
  assert config.placement.chunks == 0
  assert placer.chunk_choices(config) == [1, 5, 7]
  assert placer.chunks(config) == 1                           # rules: the unroll whole
  config.train.unroll = 11                                    # a prime: no divisor up to 8
  assert placer.chunk_choices(config) == [1, 2, 4]
  config.placement.chunks = 3
  assert placer.chunk_choices(config) == [3] and placer.chunks(config) == 3
  config.placement.chunks = -1
  with pytest.raises(UserError, match="placement.chunks must be >= 1"):
    placer.chunk_choices(config)
  config = configs.ptb_word_lstm.get_config()
  # One device: a chunk only adds ops, so the whole unroll. Two layers' worth of equal fast
  # devices with cheap links: pipelining the layers over chunks pays.
  one = placer.auto_plan(config, 10_000, ["CPU:0"], devices=parse_devices("CPU:0=8GiB@100"))
  assert one.chunks == 1 and one.to_json()["chunks"] == 1 and "the unroll in 1 chunk " in one.table()
  two = placer.auto_plan(config, 10_000, ["GPU:0", "GPU:1"],
                         devices=parse_devices("GPU:0=8GiB@100,GPU:1=8GiB@100"),
                         links=Links(Link(1e11, 1e-6)))
  assert two.chunks in (5, 7) and len({d for p in two.device_tuples().values() for d in p}) == 2
  assert two.step_secs < one.step_secs
  assert one.unplaced and one.chosen.startswith("unplaced") and not two.unplaced
  assert "ms in 1 chunk (" in one.chosen   # the best plan it weighed: the unroll whole too


def test_the_auto_placer_places_nothing_unless_placing_is_predicted_well_faster():
  from tfsys.placement import auto, placer
  config = configs.ptb_word_lstm.get_config()
  # Two logical CPUs on one core: no plan can be faster than the step whole on CPU:0.
  shared = _devices(2, gflops=100.0, memory=8 * GIB, pool="host", pool_gflops=100.0)
  plan = placer.auto_plan(config, 10_000, ["CPU:0", "CPU:1"], devices=shared,
                          links=_links(10e9, 1e-5))
  assert plan.unplaced and plan.chunks == 1 and plan.to_json()["unplaced"]
  assert set(plan.device_tuples().values()) == {("CPU:0",)}
  assert "nothing is placed" in plan.table()
  # A second core: pipelining pays, by more than UNPLACED_GAIN.
  free = _devices(2, gflops=100.0, memory=8 * GIB, pool="host", pool_gflops=200.0)
  plan = placer.auto_plan(config, 10_000, ["CPU:0", "CPU:1"], devices=free,
                          links=_links(10e9, 1e-5))
  assert not plan.unplaced and len({d for p in plan.device_tuples().values() for d in p}) == 2
  # The step whole on a GPU, the device TensorFlow would run it on, is what placing must beat.
  assert auto.home_device(parse_devices("CPU:0=8GiB@100,GPU:0=8GiB@100")).name == "GPU:0"


def test_workers_agree_on_placing_nothing():
  import tensorflow as tf
  from tfsys.placement import placer
  assignment = {"lstm0": ("CPU:0",), "softmax": ("CPU:1",)}
  strategy = tf.distribute.get_strategy()
  assert placer.agree(strategy, assignment, ["CPU:0", "CPU:1"], 0) == (assignment, 0)
  assert placer.agree(strategy, assignment, ["CPU:0", "CPU:1"], 5) == (assignment, 5)
