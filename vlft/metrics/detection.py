"""Detection and grounding metrics.

- ``coco_map``: COCO box AP through pycocotools (``COCOeval``, ``iouType="bbox"``), the
  reference implementation: mAP (IoU 0.50:0.95), mAP50, mAP75, mAP_small / _medium /
  _large (area < 32², < 96², larger; GT ``area`` as given, e.g. COCO's segment areas),
  and AR@100, as fractions; ``-1`` where the split has no ground truth of that size
  (pycocotools' convention). pycocotools rather than faster-coco-eval: it is the code
  the published COCO numbers come from and installs from the registry as a wheel; the
  faster port matters only for evaluation sets far larger than fine-tuning uses.
- ``grounding_accuracy``: the share of phrases whose first predicted box overlaps one of
  the phrase's ground-truth boxes with IoU >= 0.5 (RefCOCO's accuracy; with several
  ground-truth boxes, Flickr30k Entities' any-box protocol).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Dict, List, Mapping, Sequence

import torch

COCO_STATS = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large")


def box_iou(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> torch.Tensor:
    """[len(a), len(b)] IoU of ``[x0, y0, x1, y1]`` boxes."""
    from torchvision.ops import box_iou as tv_box_iou

    ta = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4)
    tb = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)
    return tv_box_iou(ta, tb)


def coco_map(ground_truth: Mapping[str, Any], detections: List[Mapping[str, Any]]) -> Dict[str, float]:
    """COCO box metrics of ``detections`` (COCO results: ``image_id``, ``category_id``,
    ``bbox`` ``[x, y, w, h]``, ``score``) against ``ground_truth`` (COCO instances dict)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not ground_truth.get("annotations"):
        raise ValueError("coco_map: the ground truth has no annotations to score against")
    if not detections:
        return {**{k: 0.0 for k in COCO_STATS}, "AR100": 0.0}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = copy.deepcopy(dict(ground_truth))
        gt.dataset.setdefault("info", {})
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats]
    out = dict(zip(COCO_STATS, stats[:6]))
    out["AR100"] = stats[8]
    return out


def grounding_accuracy(predicted: Sequence[Sequence[Sequence[float]]], truth: Sequence[Sequence[Sequence[float]]],
                       threshold: float = 0.5) -> Dict[str, float]:
    """Accuracy (percent) over phrases: ``predicted[i]`` are phrase i's boxes in the model's
    order (only the first counts), ``truth[i]`` its ground-truth boxes."""
    if len(predicted) != len(truth):
        raise ValueError(f"grounding_accuracy: {len(predicted)} predictions for {len(truth)} phrases")
    correct = sum(bool(p) and bool(t) and float(box_iou(p[:1], t).max()) >= threshold for p, t in zip(predicted, truth))
    n = len(truth)
    return {"accuracy": 100.0 * correct / n if n else 0.0, "phrases": n, "correct": int(correct)}
