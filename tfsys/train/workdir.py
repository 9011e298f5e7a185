"""The run directory: checked writable, holds config.json, refuses an incompatible resume."""
import json
import os
import tempfile

import ml_collections

from tfsys.errors import UserError

CONFIG_FILE = "config.json"
# What a checkpoint's variables, optimizer slots and data position depend on. Anything else
# (number of steps, logging, evaluation, learning rate) may change between runs of a workdir.
RESUME_KEYS = ("seed", "data", "model", "train.batch_size", "train.unroll", "optim.name")


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def _resume_relevant(flat: dict) -> dict:
  return {k: v for k, v in flat.items()
          if any(k == r or k.startswith(r + ".") for r in RESUME_KEYS)}


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (for evaluate.py, sample.py, export)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path} not found: is {workdir} a tfsys workdir? Train with "
                    f"scripts/train.py --workdir={workdir} first")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def prepare(config: ml_collections.ConfigDict, workdir: str, write: bool = True) -> bool:
  """Creates or checks the workdir and writes config.json; returns True if resuming.

  With write=False (a worker that is not the chief) it only creates the directory.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
      pass
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror}") from None
  path = os.path.join(workdir, CONFIG_FILE)
  new = config_to_dict(config)
  resuming = os.path.isfile(path)
  if not write:
    return resuming
  if resuming:
    with open(path, encoding="utf-8") as f:
      old = json.load(f)
    before, after = _resume_relevant(_flatten(old)), _resume_relevant(_flatten(new))
    diffs = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
             for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if diffs:
      raise UserError(f"workdir {workdir} holds a run with an incompatible config ("
                      + "; ".join(diffs[:6]) + (" ..." if len(diffs) > 6 else "")
                      + "); use a new --workdir or the original settings")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return resuming
