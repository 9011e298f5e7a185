"""Devices, the links between them, the simulation of a step, and earliest-finish placement.

The cost model (the TensorFlow whitepaper's, arXiv:1603.04467 §3.2.1): a node takes
`ops x launch_secs + part factor x flops / GFLOP/s` on a device (the factor its part's measured
speed there against the device's matmul speed, Device.part_scale), and its output reaches
another device after `latency + bytes / bandwidth`. The simulation of a step is an event simulation: each device is
one server running one node at a time, highest priority first (the longest remaining path to the
end, HEFT's "upward rank", Topcuoglu et al. 2002); a node starts once the outputs it waits for
have arrived; each directed link is its own serial channel, and transfers overlap compute.

Why launch_secs: a node stands for `ops` TensorFlow ops, and each costs the executor a dispatch
(a few microseconds on a CPU, a kernel launch on a GPU) whatever its size. It keeps small ops
from looking free, and with the latency of each transfer it is what makes a plan that cuts the
step into many small pieces over several devices pay for every piece.

Why pools: logical CPU devices of one host share its cores (and two hyperthreads share one
core's units): two of them busy at once do not each run at the speed either has alone. Devices
with the same `pool` together run at most `pool_gflops`; when more is asked of the pool, each
busy member slows in proportion. This is what predicts that splitting a step over two logical
CPUs of a 2-core machine can lose to one device (issue 16's measurements).
"""
import dataclasses
import heapq
import math

from tfsys.errors import UserError

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Device:
  name: str              # as placement rules name it: CPU:0, GPU:1
  kind: str              # CPU | GPU | ...
  gflops: float          # measured (or described) speed on the model's matmuls, GFLOP/s
  memory_bytes: int      # what parameters, slots and activations may use
  launch_secs: float = 1e-6   # dispatch cost of one op
  pool: str = ""         # devices sharing compute (logical CPUs of one host)
  pool_gflops: float = 0.0    # what the pool runs in all when all its members are busy
  # ((part, factor), ...): how much longer than its FLOPs at `gflops` a part's computation takes
  # on this device (measure.calibrate: a profiled step; the LSTM's small recurrent matmuls run
  # well below the speed of the softmax's large one); 1 for a part not listed
  part_scale: tuple = ()

  def __post_init__(self):   # (the lookup secs() does for every node of every simulation)
    object.__setattr__(self, "_factors", dict(self.part_scale))

  def secs(self, flops: float, ops: int = 1, part: str = "") -> float:
    return ops * self.launch_secs + self._factors.get(part, 1.0) * flops / (self.gflops * GB)


def canonical(name: str) -> str:
  """"/device:gpu:1", "device:GPU:1", "GPU:1" -> "GPU:1"."""
  name = name.strip()
  if "device:" in name:
    name = name.split("device:")[-1]
  return name.lstrip("/").upper()


@dataclasses.dataclass(frozen=True)
class Link:
  bandwidth: float       # bytes/s
  latency: float = 0.0   # secs per transfer

  def secs(self, nbytes: float) -> float:
    return self.latency + nbytes / self.bandwidth


class Links:
  """The link between two devices: by their names (either order), else by their kinds (either
  order), else the default. A device to itself is free."""

  def __init__(self, default: Link, kinds: dict = None, pairs: dict = None):
    self.default, self.kinds, self.pairs = default, dict(kinds or {}), dict(pairs or {})

  def link(self, a: Device, b: Device) -> Link:
    for table, x, y in ((self.pairs, a.name, b.name), (self.kinds, a.kind, b.kind)):
      found = table.get((x, y)) or table.get((y, x))
      if found:
        return found
    return self.default

  def secs(self, a: Device, b: Device, nbytes: float) -> float:
    return 0.0 if a.name == b.name else self.link(a, b).secs(nbytes)


def default_links(pcie: float = 12e9, nvlink: float = 50e9, host: float = 10e9,
                  latency: float = 10e-6) -> Links:
  """Assumed links for a described cluster (override any figure, or build Links): host <-> GPU
  over PCIe 3.0 x16 (~12 GB/s of its 16 in practice), GPU <-> GPU over NVLink (~50 GB/s), and
  between logical CPU devices of one host a copy through memory (~10 GB/s for one thread);
  10 us per transfer for the send/receive pair and its synchronization."""
  return Links(Link(pcie, latency), kinds={("CPU", "CPU"): Link(host, latency),
                                           ("GPU", "GPU"): Link(nvlink, latency),
                                           ("CPU", "GPU"): Link(pcie, latency)})


@dataclasses.dataclass
class Prediction:
  step_secs: float
  busy_secs: dict        # device -> secs it computes (wall time, slowed by its pool)
  memory_bytes: dict     # device -> parameters + slots + activations of its parts
  transfer_bytes: int    # between devices, in all
  critical_path: list    # "node@device" and "send node A->B" from the first to the last


def resolve(graph, assignment: dict, devices) -> dict:
  """{part: tuple of device indices} from {part: name or tuple of names}. A part that is not a
  row table goes to the first device of a tuple (rules.py: the rest of the part stays there)."""
  index = {canonical(d.name): k for k, d in enumerate(devices)}
  out = {}
  for part, cost in graph.parts.items():
    if part not in assignment:
      raise UserError(f"the plan places no device for the part {part!r} (parts: "
                      f"{', '.join(graph.parts)})")
    names = assignment[part]
    names = (names,) if isinstance(names, str) else tuple(names)
    for n in names:
      if canonical(n) not in index:
        raise UserError(f"the plan puts {part} on {n}, which is not among the devices: "
                        f"{', '.join(d.name for d in devices)}")
    idx = tuple(dict.fromkeys(index[canonical(n)] for n in names))
    out[part] = idx if cost.shardable else idx[:1]
  return out


def piece_bytes(node, shards: int) -> float:
  return node.out_bytes if node.reduce or shards == 1 else node.out_bytes / shards


def memory(graph, where: dict, devices) -> dict:
  used = {d.name: 0 for d in devices}
  for part, idx in where.items():
    total = graph.parts[part].total_bytes
    for s, d in enumerate(idx):
      used[devices[d].name] += total // len(idx) + (total % len(idx) if s == 0 else 0)
  return used


def simulate(graph, assignment: dict, devices, links: Links) -> Prediction:
  """One step of `graph` with its parts on `assignment`'s devices (a tuple: split by rows)."""
  where = resolve(graph, assignment, devices)
  nodes, nd = graph.nodes, len(devices)
  locs = [where[n.part] for n in nodes]
  tasks, task_of, work = [], {}, []
  for i, n in enumerate(nodes):
    for s, d in enumerate(locs[i]):
      task_of[i, s] = len(tasks)
      tasks.append((i, s, d))
      work.append(devices[d].secs(n.flops / len(locs[i]), n.ops, n.part))
  missing = [0] * len(tasks)
  local_waiters = [[] for _ in tasks]   # same part: shard s waits for the dep's shard s
  remote_waiters, dests = {}, [set() for _ in nodes]
  for t, (i, s, d) in enumerate(tasks):
    for p in graph.deps[i]:
      missing[t] += 1
      if nodes[p].part == nodes[i].part:
        local_waiters[task_of[p, s]].append(t)
      else:
        remote_waiters.setdefault((p, d), []).append(t)
        dests[p].add(d)
  rank = [0.0] * len(nodes)
  for i in reversed(range(len(nodes))):
    after = 0.0
    for m in graph.consumers[i]:
      comm = 0.0
      if nodes[m].part != nodes[i].part:
        nbytes = piece_bytes(nodes[i], len(locs[i]))
        comm = max((links.secs(devices[a], devices[b], nbytes) for a in locs[i]
                    for b in locs[m]), default=0.0)
      after = max(after, comm + rank[m])
    rank[i] = max(work[task_of[i, s]] for s in range(len(locs[i]))) + after
  pools = {}
  for k, dev in enumerate(devices):
    if dev.pool and dev.pool_gflops > 0:
      pools.setdefault(dev.pool, []).append(k)

  ready = [[] for _ in range(nd)]
  ready_at, start, finish = [0.0] * len(tasks), [0.0] * len(tasks), [0.0] * len(tasks)
  cause = [None] * len(tasks)       # what made a task ready: ("task", t) or ("send", t, src, dst)
  before = [None] * len(tasks)      # the task its device ran just before it
  last = [None] * nd
  running = [None] * nd             # [task, remaining secs at full speed]
  events, pieces, chan_free = [], {}, {}
  busy, moved = [0.0] * nd, 0.0
  now, done, seq = 0.0, 0, 0

  def make_ready(t, why):
    ready_at[t], cause[t] = now, why
    i, s, d = tasks[t]
    heapq.heappush(ready[d], (-rank[i], i, s, t))

  def arrive(i, x, why):
    pieces[i, x] = pieces.get((i, x), 0) + 1
    if pieces[i, x] == len(locs[i]):
      for w in remote_waiters[i, x]:
        missing[w] -= 1
        if not missing[w]:
          make_ready(w, why)

  for t in range(len(tasks)):
    if not missing[t]:
      make_ready(t, None)
  while done < len(tasks):
    for d in range(nd):
      if running[d] is None and ready[d]:
        t = heapq.heappop(ready[d])[3]
        running[d], start[t], before[t] = [t, work[t]], now, last[d]
    rate = [1.0] * nd
    for members in pools.values():
      asked = sum(devices[k].gflops for k in members if running[k] is not None)
      cap = devices[members[0]].pool_gflops
      if asked > cap:
        for k in members:
          rate[k] = cap / asked
    ends = {d: now + running[d][1] / rate[d] for d in range(nd) if running[d] is not None}
    t_next = min(list(ends.values()) + ([events[0][0]] if events else []), default=math.inf)
    if t_next == math.inf:
      raise RuntimeError("the simulation is stuck: a node waits for one that never runs")
    for d, end in ends.items():
      running[d][1] = 0.0 if end <= t_next else running[d][1] - rate[d] * (t_next - now)
    now = t_next
    for d in list(ends):
      if running[d][1] > 0.0:
        continue
      t = running[d][0]
      running[d], finish[t], last[d] = None, now, t
      busy[d] += now - start[t]
      done += 1
      i = tasks[t][0]
      for w in local_waiters[t]:
        missing[w] -= 1
        if not missing[w]:
          make_ready(w, ("task", t))
      for x in sorted(dests[i]):
        if x == d:
          arrive(i, x, ("task", t))
          continue
        nbytes = piece_bytes(nodes[i], len(locs[i]))
        begin = max(now, chan_free.get((d, x), 0.0))
        chan_free[d, x] = begin + links.secs(devices[d], devices[x], nbytes)
        moved += nbytes
        seq += 1
        heapq.heappush(events, (chan_free[d, x], seq, i, t, d, x))
    while events and events[0][0] <= now:
      _, _, i, t, d, x = heapq.heappop(events)
      arrive(i, x, ("send", t, d, x))

  return Prediction(now, {dev.name: busy[k] for k, dev in enumerate(devices)},
                    memory(graph, where, devices), int(moved),
                    _critical_path(graph, devices, tasks, finish, start, ready_at, cause, before))


def _critical_path(graph, devices, tasks, finish, start, ready_at, cause, before) -> list:
  shards = {}
  for i, s, d in tasks:
    shards[i] = shards.get(i, 0) + 1

  def label(t):
    i, s, d = tasks[t]
    return f"{graph.nodes[i].name}{f'[{s}]' if shards[i] > 1 else ''}@{devices[d].name}"
  path, t = [], max(range(len(tasks)), key=lambda u: finish[u]) if tasks else None
  while t is not None:
    path.append(label(t))
    if start[t] > ready_at[t] and before[t] is not None:
      t = before[t]         # it waited for its device
    elif cause[t] is None:
      t = None
    elif cause[t][0] == "send":
      _, t, a, b = cause[t]
      path.append(f"send {graph.nodes[tasks[t][0]].name} {devices[a].name}->{devices[b].name}")
    else:
      t = cause[t][1]
  return path[::-1]


def mean_ranks(graph, devices, links: Links) -> list:
  """Upward ranks with each node's mean time over the devices and each edge's mean transfer
  time over the pairs of distinct devices (HEFT's priorities, before anything is placed)."""
  pairs = [(a, b) for a in devices for b in devices if a.name != b.name]
  rank = [0.0] * len(graph.nodes)
  for i in reversed(range(len(graph.nodes))):
    n = graph.nodes[i]
    after = 0.0
    for m in graph.consumers[i]:
      comm = 0.0
      if graph.nodes[m].part != n.part and pairs:
        comm = sum(links.secs(a, b, n.out_bytes) for a, b in pairs) / len(pairs)
      after = max(after, comm + rank[m])
    rank[i] = sum(d.secs(n.flops, n.ops, n.part) for d in devices) / len(devices) + after
  return rank


def earliest_finish(graph, devices, links: Links, options, commit) -> dict:
  """Greedy list scheduling (the whitepaper's placer; ETF/HEFT): nodes in priority order, each
  on the device where it would finish earliest given the devices' queues and the transfers of
  its inputs. A node whose part is placed goes where its part is (colocation); the first node
  of a part picks among `options(part)` (tuples of device indices that can hold it; the placer
  raises if none can) and `commit(part, devices)` records the choice. Returns {part: indices}.
  Pools are not modelled here: the placer's simulation of the result judges that."""
  nodes = graph.nodes
  rank = mean_ranks(graph, devices, links)
  placed, loc, fin, arrived = {}, {}, {}, {}
  dev_free, chan_free = [0.0] * len(devices), {}
  indeg = [len(ds) for ds in graph.deps]
  heap = [(-rank[i], i) for i in range(len(nodes)) if not indeg[i]]
  heapq.heapify(heap)
  while heap:
    i = heapq.heappop(heap)[1]
    n = nodes[i]
    best = None
    for opt in ([placed[n.part]] if n.part in placed else options(n.part)):
      est = _estimate(graph, devices, links, i, opt, loc, fin, arrived, dev_free, chan_free)
      if best is None or est[0] < best[0]:
        best = est + (opt,)
    end, shard_ends, sends, opt = best
    if n.part not in placed:
      placed[n.part] = opt
      commit(n.part, opt)
    loc[i] = opt
    for s, d in enumerate(opt):
      fin[i, s] = shard_ends[s]
      dev_free[d] = shard_ends[s]
    for key, (arrival, channel, channel_free) in sends.items():
      arrived[key] = arrival
      chan_free[channel] = max(chan_free.get(channel, 0.0), channel_free)
    for m in graph.consumers[i]:
      indeg[m] -= 1
      if not indeg[m]:
        heapq.heappush(heap, (-rank[m], m))
  return placed


def _estimate(graph, devices, links, i, opt, loc, fin, arrived, dev_free, chan_free):
  """When node i would finish on the devices opt (one per shard), and the transfers it needs."""
  n = graph.nodes[i]
  chan, sends, ends = {}, {}, []
  for s, d in enumerate(opt):
    ready = 0.0
    for p in graph.deps[i]:
      if graph.nodes[p].part == n.part:
        ready = max(ready, fin[p, s])
        continue
      for ps, src in enumerate(loc[p]):
        key = (p, ps, d)
        if src == d:
          t = fin[p, ps]
        elif key in arrived or key in sends:
          t = arrived[key] if key in arrived else sends[key][0]
        else:
          channel = (src, d)
          begin = max(fin[p, ps], chan.get(channel, chan_free.get(channel, 0.0)))
          t = chan[channel] = begin + links.secs(devices[src], devices[d],
                                                 piece_bytes(graph.nodes[p], len(loc[p])))
          sends[key] = (t, channel, t)
        ready = max(ready, t)
    ends.append(max(ready, dev_free[d]) + devices[d].secs(n.flops / len(opt), n.ops, n.part))
  return max(ends), ends, sends
