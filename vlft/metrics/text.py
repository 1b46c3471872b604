"""Text recognition error rates (OCR): character and word error rate.

CER = (substitutions + deletions + insertions) / reference characters, summed over the
split (corpus level, as jiwer and the OCR literature compute it, not a mean of per-image
rates); WER the same over whitespace-separated words. Each is the Levenshtein distance
to the closest reference when an image has several. Texts are compared as given except
that runs of whitespace become one space (``normalize``).
"""
from __future__ import annotations

from typing import Dict, Hashable, List, Mapping, Sequence


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance between two sequences (characters or words)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def normalize(text: str) -> str:
    return " ".join(text.split())


def error_rates(predictions: Mapping[Hashable, str], references: Mapping[Hashable, List[str]]) -> Dict[str, float]:
    """``{"CER", "WER"}`` in percent, over the images in ``predictions``."""
    char_err = char_total = word_err = word_total = 0
    for key, hyp in predictions.items():
        refs = [normalize(r) for r in references.get(key) or []]
        if not refs:
            raise ValueError(f"error_rates: image {key!r} has no reference text")
        hyp = normalize(hyp)
        ref = min(refs, key=lambda r: edit_distance(r, hyp) / max(len(r), 1))
        char_err += edit_distance(ref, hyp)
        char_total += len(ref)
        word_err += edit_distance(ref.split(), hyp.split())
        word_total += len(ref.split())
    return {"CER": 100.0 * char_err / max(char_total, 1), "WER": 100.0 * word_err / max(word_total, 1),
            "images": len(predictions)}
