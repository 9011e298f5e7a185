"""The gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, "An Empirical Model
of Large-Batch Training"), the batch size beyond which larger batches stop paying off.

With data parallelism we get two gradient estimates for free each step: each replica's own
("small batch", B_small examples) and their all-reduced mean ("big batch", B_big examples).
Since E|G_B|² = |G|² + tr(Σ)/B, Appendix A.1's unbiased estimators are

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr(Σ) ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Each is noisy, so (as the paper does) each is smoothed with an exponential moving average and
B_simple is the ratio of the averages. |G_small|² is the mean over replicas of their squared
norms. Batch sizes here count rows of the token stream (sequences of `unroll` tokens).
"""


def two_batch_estimates(small_sq: float, big_sq: float, b_small: float, b_big: float):
  """Unbiased (|G|², tr Σ) from squared gradient norms at two batch sizes."""
  if b_big <= b_small:
    raise ValueError(f"need b_big > b_small, got {b_big} and {b_small}")
  grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
  trace_sigma = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
  return grad_sq, trace_sigma


class NoiseScale:
  """Smoothed estimates; `update` returns the TensorBoard scalars noise/*."""

  def __init__(self, decay: float = 0.95):
    self.decay = decay
    self._grad_sq = self._trace = 0.0
    self._n = 0

  def update(self, small_sq: float, big_sq: float, b_small: float, b_big: float) -> dict:
    grad_sq, trace = two_batch_estimates(small_sq, big_sq, b_small, b_big)
    d = self.decay
    self._grad_sq = d * self._grad_sq + (1 - d) * grad_sq
    self._trace = d * self._trace + (1 - d) * trace
    self._n += 1
    correction = 1 - d ** self._n     # the averages start at zero
    g, s = self._grad_sq / correction, self._trace / correction
    return {"noise/b_simple": s / g if g > 0 else float("nan"),
            "noise/grad_sq_norm": g, "noise/trace_sigma": s}
