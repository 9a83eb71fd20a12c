"""Parity: the artifact against the unmodified PyTorch reference (needs both sides)."""

from .metrics import DetectionMatch, match_detections, tensor_stats

__all__ = ["DetectionMatch", "match_detections", "tensor_stats"]
