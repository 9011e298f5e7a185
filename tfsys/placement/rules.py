"""Placement rules: an ordered list of (pattern on a part's name, devices), first match wins.

    --config.placement.rules="char_cnn|softmax=CPU:0, lstm0=GPU:0, lstm1=GPU:1"

A model is made of parts (models/variables.py: each declared variable names its part; the LSTM
LM has `char_cnn` or `embedding`, `lstm0`, `lstm1`, ..., `softmax`). A pattern is a regular
expression that must match a part's whole name (`lstm.*`, `char_cnn|softmax`); the first rule
that matches a part places it, so a general rule after specific ones is a default for the rest
(big_vision's `sharding_strategy` is the same ordered list over parameter paths). Parts that no
rule matches go to `placement.default`. A rule's devices are one device, or several joined by
`+` (`softmax=CPU:0+CPU:1`): a part's row tables (the embedding, the softmax) are then split by
rows over them, the rest of the part stays on the first.

Devices are named relative to the host a replica runs on (`CPU:1`, `GPU:0`), so the same rules
hold on every worker of multi_worker and every ps worker. A rule naming a device this host does
not have is an error that lists the devices there are; a pattern that matches no part is a
warning naming it (it is probably a typo, but a rule list shared by two models may mean it).
"""
import dataclasses
import re

from absl import logging

from tfsys.errors import UserError

MODES = ("none", "rules", "auto")
_DEVICE = re.compile(r"^(CPU|GPU|TPU):(\d+)$")


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  devices: tuple   # ("CPU:0",) or, row-sharded, ("CPU:0", "CPU:1")


def device_name(text: str) -> str:
  """"cpu:1", "/device:CPU:1", "CPU:1" -> "CPU:1"; anything else is a UserError."""
  name = text.strip()
  for prefix in ("/device:", "device:", "/"):
    if name.startswith(prefix):
      name = name[len(prefix):]
  name = name.upper()
  if not _DEVICE.match(name):
    raise UserError(f"--config.placement: {text.strip()!r} is not a device name: write it as "
                    "KIND:INDEX relative to the replica's host, e.g. CPU:0 or GPU:1")
  return name


def parse(text: str) -> list:
  """"pattern=DEV[+DEV...], ..." -> [Rule, ...] in order."""
  rules = []
  for item in (text or "").split(","):
    if not item.strip():
      continue
    pattern, sep, devices = item.rpartition("=")
    if not sep or not pattern.strip() or not devices.strip():
      raise UserError(f"--config.placement.rules: {item.strip()!r} is not pattern=DEVICE "
                      "(e.g. lstm0=CPU:1, or softmax=CPU:0+CPU:1 to split its rows)")
    try:
      re.compile(pattern.strip())
    except re.error as e:
      raise UserError(f"--config.placement.rules: {pattern.strip()!r} is not a regular "
                      f"expression ({e})") from None
    names = tuple(device_name(d) for d in devices.split("+"))
    if len(set(names)) != len(names):
      raise UserError(f"--config.placement.rules: {item.strip()!r} names a device twice")
    rules.append(Rule(pattern.strip(), names))
  return rules


def mode(placement_config) -> str:
  """none | rules | auto: rules given without a mode mean rules."""
  m = placement_config.mode
  if m not in MODES:
    raise UserError(f"--config.placement.mode must be one of {', '.join(MODES)}, got {m!r}")
  if m == "none" and placement_config.rules.strip():
    return "rules"
  if m == "rules" and not placement_config.rules.strip():
    raise UserError("--config.placement.mode=rules needs --config.placement.rules "
                    "(e.g. \"lstm0=CPU:1, lstm1=CPU:2\")")
  if m != "auto" and placement_config.get("devices", "").strip():
    raise UserError("--config.placement.devices describes the devices for the auto placer; "
                    "give --config.placement.mode=auto, or leave it empty")
  return m


def assign(parts, rules, default: str) -> dict:
  """{part: devices tuple} for every part: the first rule whose pattern matches its whole name,
  else the default. Warns once for each pattern that matches no part."""
  default = (device_name(default),)
  out, used = {}, set()
  for part in parts:
    for k, rule in enumerate(rules):
      if re.fullmatch(rule.pattern, part):
        out[part] = rule.devices
        used.add(k)
        break
    else:
      out[part] = default
  for k, rule in enumerate(rules):
    if k not in used:
      logging.warning("placement rule %r matches no part of this model (its parts: %s)",
                      rule.pattern, ", ".join(parts))
  return out


def check_devices(assignment: dict, available) -> None:
  """A UserError naming the first device of `assignment` that `available` lacks, and listing
  the ones there are."""
  have = set(available)
  for part, devices in assignment.items():
    for d in devices:
      if d not in have:
        raise UserError(
            f"--config.placement places {part} on {d}, which this host does not have; its "
            f"devices: {', '.join(sorted(have))}. Without GPUs, --config.distribute."
            "num_logical_cpus=N gives N logical CPU devices CPU:0..CPU:N-1")


def as_text(assignment: dict) -> str:
  """{part: devices} as the rules that give it (placement.rules' syntax)."""
  return ", ".join(f"{re.escape(part)}={'+'.join(devices)}" for part, devices in assignment.items())
