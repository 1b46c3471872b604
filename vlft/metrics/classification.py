"""Classification accuracy (NLVR2 and other multimodal classification tasks)."""
from __future__ import annotations

from typing import Any, Sequence


def accuracy(predictions: Sequence[Any], targets: Sequence[Any]) -> float:
    """The fraction (0..1) of ``predictions`` equal to their ``targets``, as LAVIS's
    ``MultimodalClassificationTask`` reports it (``(targets == predictions).sum() / n``)."""
    if len(predictions) != len(targets):
        raise ValueError(f"accuracy: {len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("accuracy: no predictions to score")
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)
