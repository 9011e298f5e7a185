"""Injected stragglers, for the backup-worker experiments (Chen et al. 2016, Fig. 2)."""
import numpy as np

from tfsys.errors import UserError


class Straggler:
  """Injected delay of one worker: simulated compute, so that its step's compute takes at least
  compute_ms in all (the real gradient computation counts towards it), plus for a chosen worker
  with `probability` a heavy-tailed scale_ms * (1 + Pareto(shape)) (the delays of Chen et al.'s
  Fig. 2 are)."""

  def __init__(self, c, worker: int, seed: int):
    spec = c.workers.strip()
    try:
      chosen = spec == "all" or (bool(spec) and worker in {int(x) for x in spec.split(",")})
    except ValueError:
      raise UserError(f"--config.distribute.straggler.workers must be '', 'all' or worker "
                      f"indices like '0,2', got {spec!r}") from None
    if c.scale_ms < 0 or c.compute_ms < 0 or c.shape <= 0 or not 0 <= c.probability <= 1:
      raise UserError("--config.distribute.straggler needs compute_ms, scale_ms >= 0, shape > 0 "
                      "and probability in [0, 1]")
    self.c, self.chosen = c, chosen
    self.rng = np.random.default_rng([seed, worker])

  def delay_secs(self, computed_secs: float = 0.0) -> float:
    """Seconds to sleep after a gradient that took `computed_secs` to compute."""
    ms = max(self.c.compute_ms - computed_secs * 1e3, 0.0)
    if self.chosen and self.c.scale_ms and self.rng.random() < self.c.probability:
      ms += self.c.scale_ms * (1.0 + self.rng.pareto(self.c.shape))
    return ms / 1e3


