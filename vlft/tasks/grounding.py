"""Task ``grounding``: phrase grounding (Florence-2 ``<CAPTION_TO_PHRASE_GROUNDING>``),
scored as accuracy at IoU >= 0.5 per phrase (RefCOCO / Flickr30k Entities style).

Each item's prompt carries its caption; the model's answer is ``phrase<loc>...`` runs.
For every ground-truth phrase of an item the *first* box predicted for it counts: an item
with one phrase (a referring expression) takes the first box of the answer whatever text
precedes it; an item with several takes the first box whose predicted phrase equals the
phrase (case and surrounding spaces ignored). The phrase is correct when that box has
IoU >= ``run.iou_threshold`` (0.5) with one of its ground-truth boxes. ``agg_metrics`` =
accuracy (percent). Malformed answers are counted as in ``detection``; a phrase with no
predicted box is simply wrong. The same pictures as ``detection`` are saved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.detection import DetectionTask


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


@registry.register_task("grounding")
class GroundingTask(DetectionTask):
    RUN_OPTIONS = {**DetectionTask.RUN_OPTIONS,
                   "iou_threshold": Field(0.5, (int, float), "IoU at which a phrase's first box counts as correct")}

    def __init__(self, iou_threshold: float = 0.5, **options: Any):
        super().__init__(**options)
        self.iou_threshold = float(iou_threshold)

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, Any]:
        from vlft.metrics.detection import grounding_accuracy

        if dataset is None or not hasattr(dataset, "instance_targets"):
            raise TypeError(f"grounding needs the {split_name} dataset's instance_targets() (a detection builder)")
        targets = dataset.instance_targets()
        predicted: List[list] = []
        truth: List[list] = []
        for r in results:
            target = targets[int(r["instance_id"])]
            phrases = target["phrases"]
            for phrase in phrases:
                gt = [b for l, b in zip(target["labels"], target["boxes"]) if l == phrase]
                if len(phrases) == 1:
                    boxes = list(r["bboxes"])
                else:
                    boxes = [b for l, b in zip(r["labels"], r["bboxes"]) if _norm(l) == _norm(phrase)]
                predicted.append(boxes[:1])
                truth.append(gt)
        metrics: Dict[str, Any] = grounding_accuracy(predicted, truth, self.iou_threshold)
        metrics["agg_metrics"] = metrics["accuracy"]
        metrics["items"] = len(results)
        metrics["phrases_without_box"] = sum(1 for p in predicted if not p)
        metrics.update(self.malformed_counts(results))
        self.draw(results, dataset, output_dir, split_name, epoch)
        return metrics
