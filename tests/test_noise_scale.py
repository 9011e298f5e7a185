"""The noise-scale estimator on a problem where |G|² and tr(Σ) are known in closed form."""
import numpy as np
import pytest

from tfsys.monitor.noise_scale import NoiseScale, two_batch_estimates


def test_recovers_known_gradient_noise():
  # Per-example gradients g = G + ε, ε ~ N(0, diag(σ²)): |G|² and tr(Σ) = Σσ² are known.
  rng = np.random.default_rng(0)
  dim, b_small, replicas = 50, 8, 4
  G = rng.normal(size=dim)
  sigma = rng.uniform(0.5, 3.0, size=dim)
  true_g2, true_trace = float(G @ G), float((sigma ** 2).sum())
  est = NoiseScale(decay=0.999)
  for _ in range(3000):
    # Each replica averages b_small examples; the big batch averages all of them.
    per_replica = G + rng.normal(size=(replicas, b_small, dim)).mean(1) * sigma
    small_sq = float(np.mean((per_replica ** 2).sum(1)))
    big = per_replica.mean(0)
    out = est.update(small_sq, float(big @ big), b_small, b_small * replicas)
  assert out["noise/grad_sq_norm"] == pytest.approx(true_g2, rel=0.05)
  assert out["noise/trace_sigma"] == pytest.approx(true_trace, rel=0.05)
  assert out["noise/b_simple"] == pytest.approx(true_trace / true_g2, rel=0.08)


def test_exact_on_expected_values():
  # Plugging in the expectations E|G_B|² = |G|² + tr(Σ)/B returns the truth exactly.
  g2, trace = 3.0, 60.0
  got = two_batch_estimates(g2 + trace / 4, g2 + trace / 32, 4, 32)
  assert got == pytest.approx((g2, trace))
  with pytest.raises(ValueError):
    two_batch_estimates(1.0, 1.0, 8, 8)
