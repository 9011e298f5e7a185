"""Placement: where a model's parts (their variables and their computation) run.

  rules.py     placement.rules: ordered (pattern on a part's name, devices) pairs
  graph.py     a step as a dependency graph of part computations, costed from shapes
  schedule.py  simulation of a step on devices, and greedy earliest-finish placement
  auto.py      placement.mode = "auto": the cost model, the placer and its plan
"""
