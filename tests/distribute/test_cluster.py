"""TF_CONFIG parsing, port checks and peer waiting: errors name the problem, nothing hangs."""
import json
import socket

import pytest

from tfsys.distribute import cluster
from tfsys.distribute.launch import cluster_spec, free_ports
from tfsys.errors import UserError


def _cfg(cluster_spec, task):
  return json.dumps({"cluster": cluster_spec, "task": task})


def test_parse_and_chief():
  spec = {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]}
  c = cluster.parse(_cfg(spec, {"type": "worker", "index": 1}))
  assert c.name == "worker1" and c.address == "127.0.0.1:2222" and not c.is_chief
  assert cluster.parse(_cfg(spec, {"type": "worker", "index": 0})).is_chief
  with_chief = dict(spec, chief=["127.0.0.1:3333"])
  assert not cluster.parse(_cfg(with_chief, {"type": "worker", "index": 0})).is_chief
  assert cluster.parse(_cfg(with_chief, {"type": "chief", "index": 0})).is_chief
  assert [n for n, _ in cluster.parse(_cfg(spec, {"type": "worker", "index": 0})).peers()] == ["worker1"]
  assert cluster.parse(None) is None and cluster.parse("  ") is None


@pytest.mark.parametrize("raw,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), 'needs a "cluster"'),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), 'needs a "task"'),
    (_cfg({"worker": ["127.0.0.1:1"]}, {"type": "chief", "index": 0}), "task type 'chief' is not a job"),
    (_cfg({"worker": ["127.0.0.1:1"]}, {"type": "worker", "index": 1}), "index 1 is out of range"),
    (_cfg({"worker": ["127.0.0.1:1", "127.0.0.1:1"]}, {"type": "worker", "index": 0}),
     "gives address 127.0.0.1:1 to both worker0 and worker1"),
    (_cfg({"worker": ["localhost"]}, {"type": "worker", "index": 0}), "is not host:port"),
    (_cfg({"trainer": ["a:1"]}, {"type": "trainer", "index": 0}), "job 'trainer' is not one of"),
    (_cfg({"worker": []}, {"type": "worker", "index": 0}), "must list at least one address"),
])
def test_bad_tf_config(raw, message):
  with pytest.raises(UserError, match=message):
    cluster.parse(raw)


def test_port_in_use_is_named():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"port {port} .* already in use"):
      cluster.check_port_free(f"127.0.0.1:{port}")


def test_unreachable_peers_are_listed():
  dead = free_ports(1)[0]          # nothing listens there
  with socket.socket() as live:
    live.bind(("127.0.0.1", 0))
    live.listen()
    up = live.getsockname()[1]
    c = cluster.parse(_cfg({"worker": ["127.0.0.1:1", f"127.0.0.1:{up}", f"127.0.0.1:{dead}"]},
                           {"type": "worker", "index": 0}))
    assert cluster.unreachable_peers(c) == [("worker2", f"127.0.0.1:{dead}")]


def test_local_cluster_spec_has_distinct_loopback_ports():
  spec = cluster_spec(3, num_ps=2)
  addrs = spec["worker"] + spec["ps"]
  assert len(set(addrs)) == 5 and all(a.startswith("127.0.0.1:") for a in addrs)


def test_multi_worker_backend_needs_a_real_cluster(monkeypatch):
  from configs import common
  from tfsys.distribute.backends import make_backend
  c = common.base_config().distribute
  c.backend = "multi_worker"
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(UserError, match="needs TF_CONFIG"):
    make_backend(c)
  monkeypatch.setenv("TF_CONFIG", _cfg({"worker": ["127.0.0.1:1"]}, {"type": "worker", "index": 0}))
  with pytest.raises(UserError, match="single task"):
    make_backend(c)
  monkeypatch.setenv("TF_CONFIG", _cfg({"worker": ["127.0.0.1:1", "127.0.0.1:2"], "ps": ["127.0.0.1:3"]},
                                       {"type": "worker", "index": 0}))
  with pytest.raises(UserError, match="only have chief and worker jobs"):
    make_backend(c)
