"""Monitoring: TensorBoard writers, throughput, the gradient noise scale, step profiles."""
from tfsys.monitor.noise_scale import NoiseScale
from tfsys.monitor.profile import StepProfiler
from tfsys.monitor.summaries import Throughput, Writers, format_duration

__all__ = ["NoiseScale", "StepProfiler", "Throughput", "Writers", "format_duration"]
