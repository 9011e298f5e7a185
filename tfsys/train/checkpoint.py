"""Checkpoints in WORKDIR/checkpoints that survive a crash at any moment.

TensorFlow writes a checkpoint's files under a temporary name, renames them when complete, and
only then rewrites the `checkpoint` index file (itself written to a temporary file and renamed).
A crash mid-write therefore leaves the index pointing at the previous, complete checkpoint.
If a listed checkpoint still cannot be read (a truncated file, a disk fault), `restore_latest`
says so and falls back to the next older one instead of failing the run.
"""
import glob
import os
import shutil

import tensorflow as tf
from absl import logging

from tfsys.errors import UserError, storage_error

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """Saves into WORKDIR/checkpoints, or, for a worker that is not the chief, into a scratch
  directory removed by `close()`: under MultiWorkerMirroredStrategy every worker must take
  part in a save, but only the chief's copy is kept (everyone restores from it)."""

  def __init__(self, workdir: str, keep: int, is_chief: bool = True, task_name: str = "", **objects):
    self.directory = os.path.join(workdir, CHECKPOINT_DIR)
    self.checkpoint = tf.train.Checkpoint(**objects)
    self._objects = objects
    self._write_dir = self.directory if is_chief else os.path.join(workdir, f"tmp_{task_name}")
    if not is_chief:   # this task's scratch copy from a run that was killed: never read
      shutil.rmtree(self._write_dir, ignore_errors=True)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self._write_dir, max_to_keep=keep)

  @property
  def latest(self) -> str | None:
    """The newest checkpoint in WORKDIR/checkpoints (the chief's)."""
    return tf.train.latest_checkpoint(self.directory)

  def save(self, step: int) -> str:
    return self.manager.save(checkpoint_number=step)

  def _variables(self) -> list:
    out = []
    for obj in self._objects.values():
      if isinstance(obj, tf.Variable):
        out.append(obj)
      elif isinstance(obj, (list, tuple)):
        out.extend(v for v in obj if isinstance(v, tf.Variable))
      else:
        out.extend(v for v in getattr(obj, "variables", []) if isinstance(v, tf.Variable))
    return out

  def save_error(self, step: int, e: Exception) -> Exception:
    """A failed save as one line: where, why, how much it needed, what is intact. The partial
    ckpt-N_temp/ is removed (freeing what it took). Errors other than space or permission are
    returned unchanged."""
    shutil.rmtree(os.path.join(self._write_dir, f"ckpt-{step}_temp"), ignore_errors=True)
    latest = self.latest
    if latest != os.path.join(self.directory, f"ckpt-{step}"):
      # Written, but the index that lists it was not: nothing will read it; free its space.
      for path in glob.glob(os.path.join(self._write_dir, f"ckpt-{step}.*")):
        os.remove(path)
    if latest:
      needed = sum(os.path.getsize(p) for p in glob.glob(latest + ".*"))
    else:
      needed = sum(v.shape.num_elements() * v.dtype.size for v in self._variables())
    intact = (f"The last checkpoint, {os.path.basename(latest)}, is intact: free space and run "
              "the same command to resume from it" if latest else "No checkpoint was written yet")
    return storage_error(os.path.join(self._write_dir, f"ckpt-{step}"), e,
                                     needed, intact)

  def close(self) -> None:
    if self._write_dir != self.directory:
      shutil.rmtree(self._write_dir, ignore_errors=True)

  def restore_latest(self, expect_partial: bool = False) -> str | None:
    """Restores the newest readable checkpoint; returns its path, or None if there is none."""
    state = tf.train.get_checkpoint_state(self.directory)
    candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
    for path in candidates:
      try:
        status = self.checkpoint.restore(path)
        if expect_partial:
          status.expect_partial()
        else:
          status.assert_existing_objects_matched()
        return path
      except (tf.errors.OpError, ValueError, AssertionError) as e:
        logging.warning("checkpoint %s cannot be restored (%s); trying an older one",
                        path, str(e).splitlines()[0][:200])
    if candidates:
      raise UserError(f"no checkpoint in {self.directory} can be restored "
                      f"(tried {len(candidates)}); see the warnings above")
    return None


def restore_for_inference(workdir: str, **objects) -> str:
  """Restores the newest checkpoint of a workdir into `objects` (e.g. model=...) or fails clearly."""
  if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
    raise UserError(f"no checkpoints in {workdir}: train first with scripts/train.py "
                    f"--workdir={workdir}")
  ckpt = Checkpointer(workdir, keep=1000, **objects)
  path = ckpt.restore_latest(expect_partial=True)
  if path is None:
    raise UserError(f"no checkpoints in {os.path.join(workdir, CHECKPOINT_DIR)}")
  return path
