"""Monitoring: TensorBoard writers and throughput."""
from tfsys.monitor.summaries import Throughput, Writers, format_duration

__all__ = ["Throughput", "Writers", "format_duration"]
