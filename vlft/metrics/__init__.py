"""Evaluation metrics: caption (pycocoevalcap)."""
from vlft.metrics.caption import CaptionScorer, caption_metrics, spice_unavailable_reason

__all__ = ["CaptionScorer", "caption_metrics", "spice_unavailable_reason"]
