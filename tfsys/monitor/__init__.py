"""Monitoring: TensorBoard writers, throughput, the gradient noise scale."""
from tfsys.monitor.noise_scale import NoiseScale
from tfsys.monitor.summaries import Throughput, Writers, format_duration

__all__ = ["NoiseScale", "Throughput", "Writers", "format_duration"]
