"""TensorBoard writing: what is written reads back under the right tags and steps."""
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from tfsys.monitor.summaries import Writers


def _scalars(logdir):
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
          for tag in acc.Tags()["tensors"]}


def test_scalar_series_writes_every_step_under_its_own_step(tmp_path):
  writers = Writers(str(tmp_path))
  writers.scalar_series("train", [5, 6, 7], {"a": [1.0, 2.0, 3.0], "b": [0, 1, 0]})
  writers.scalar_series("train", [8], {"a": [4.5], "b": [2]})      # the compiled writer again
  writers.scalar_series("train", [], {"a": [], "b": []})            # nothing to write
  writers.scalars("train", 9, {"a": 7.0})                          # the eager way agrees
  writers.flush()
  got = _scalars(str(tmp_path / "train"))
  assert set(got) == {"a", "b"}                                    # no loop scope in the tags
  assert got["a"] == [(5, 1.0), (6, 2.0), (7, 3.0), (8, 4.5), (9, 7.0)]
  assert got["b"] == [(5, 0.0), (6, 1.0), (7, 0.0), (8, 2.0)]


def test_scalar_series_rejects_ragged_values(tmp_path):
  with pytest.raises(ValueError):
    Writers(str(tmp_path)).scalar_series("train", [1, 2], {"a": [1.0], "b": [1.0, 2.0]})
