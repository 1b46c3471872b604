"""Task ``detection``: prompted object detection (Florence-2 ``<OD>``, ``<DENSE_REGION_CAPTION>``)
scored with COCO box AP.

Each rank generates its shard (``model.predict``: batched beam search, then boxes parsed
from the loc tokens at the original image size, one score per box: see
``vlft.models.florence2.model``); the gathered results are scored by pycocotools against
the split's ground truth (``dataset.ground_truth()``, COCO format): mAP, mAP50, mAP75,
mAP_small / _medium / _large, AR100; ``agg_metrics`` = mAP. The predictions are saved in
COCO results format (``result/<split>_<epoch>_coco_results.json``: ``image_id``,
``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``) next to the raw results.

Malformed generations never stop an evaluation: a label with an incomplete group of loc
tokens, an empty label, an inverted box, text without boxes, an empty output and a label
that is not one of the split's categories are counted and reported (``malformed_*``,
``unknown_labels``); the well-formed boxes of the same output still count.

After each evaluation a picture (``pictures/<split>_<epoch>.png``: ground truth next to
the predictions for the first ``run.draw_images`` items) is written to the run folder,
and to TensorBoard when ``run.log_backends`` has it.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from vlft.common import dist
from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import _plain

logger = logging.getLogger(__name__)


@registry.register_task("detection")
class DetectionTask(BaseTask):
    RUN_OPTIONS = {
        "num_beams": 3,
        "max_len": Field(1024, (int,), "most new tokens per generated answer (capped by the decoder's positions)"),
        "min_len": 1,
        "length_penalty": 1.0,
        "repetition_penalty": 1.0,
        "prompt": Field(None, (str, type(None)), "task prompt for every item (null: each item's own, e.g. <OD>)"),
        "draw_images": Field(8, (int,), "validation images in the picture saved after each evaluation (0: none)"),
        "draw_min_score": Field(0.0, (int, float), "boxes scored below this are left out of the picture"),
    }
    result_key = "instance_id"

    def __init__(self, num_beams: int = 3, max_len: int = 1024, min_len: int = 1, length_penalty: float = 1.0,
                 repetition_penalty: float = 1.0, prompt: Optional[str] = None, draw_images: int = 8,
                 draw_min_score: float = 0.0):
        super().__init__()
        self.decoding = dict(num_beams=num_beams, max_length=max_len, min_length=min_len, length_penalty=length_penalty,
                             repetition_penalty=repetition_penalty, prompt=prompt)
        self.draw_images, self.draw_min_score = int(draw_images), float(draw_min_score)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        if not hasattr(model, "predict"):
            raise TypeError(f"task {type(self).__name__} needs a model with predict() returning boxes (e.g. florence2), "
                            f"got {type(model).__name__}")
        predictions = model.predict(samples, **self.decoding)
        return [{"instance_id": _plain(i), "image_id": _plain(img), **p}
                for i, img, p in zip(samples["instance_id"], samples["image_id"], predictions)]

    @staticmethod
    def malformed_counts(results: List[Mapping[str, Any]]) -> Dict[str, int]:
        counts: Counter = Counter()
        for r in results:
            counts.update(r.get("malformed") or {})
        out = {f"malformed_{k}": int(v) for k, v in sorted(counts.items())}
        out["outputs_with_malformed"] = sum(1 for r in results if r.get("malformed"))
        return out

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, Any]:
        from vlft.metrics.detection import coco_map

        if dataset is None or not hasattr(dataset, "ground_truth"):
            raise TypeError(f"detection needs the {split_name} dataset's ground_truth() (a detection builder)")
        truth = dataset.ground_truth()
        ids = {c["name"]: c["id"] for c in truth["categories"]}
        detections, unknown = [], Counter()
        for r in results:
            for (x0, y0, x1, y1), label, score in zip(r["bboxes"], r["labels"], r["scores"]):
                if label not in ids:
                    unknown[label] += 1
                    continue
                detections.append({"image_id": r["image_id"], "category_id": ids[label],
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
        metrics: Dict[str, Any] = coco_map(truth, detections)
        metrics["agg_metrics"] = max(metrics["mAP"], 0.0)
        metrics.update(images=len(results), detections=len(detections), unknown_labels=sum(unknown.values()))
        metrics.update(self.malformed_counts(results))
        if unknown:
            logger.warning("%s: %d predicted boxes have labels that are not categories of the split, e.g. %s",
                           split_name, sum(unknown.values()), [l for l, _ in unknown.most_common(3)])
        self.save_coco_results(detections, output_dir, f"{split_name}_{epoch if epoch is not None else 'final'}")
        self.draw(results, dataset, output_dir, split_name, epoch)
        return metrics

    @staticmethod
    def save_coco_results(detections: List[Dict[str, Any]], output_dir: Optional[Path], name: str) -> Optional[Path]:
        if output_dir is None or not dist.is_main_process():
            return None
        path = Path(output_dir) / "result" / f"{name}_coco_results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(detections))
        return path

    def draw(self, results: List[Mapping[str, Any]], dataset, output_dir: Optional[Path], split_name: str,
             epoch: Any) -> Optional[Path]:
        """The ground truth next to the predictions for the first ``draw_images`` items."""
        if output_dir is None or self.draw_images <= 0 or not hasattr(dataset, "raw"):
            return None
        from vlft.tools.draw import comparison_grid

        entries = []
        for r in sorted(results, key=lambda r: r["instance_id"])[: self.draw_images]:
            image, gt_labels, gt_boxes = dataset.raw(int(r["instance_id"]))
            if image is None:
                continue
            keep = [k for k, s in enumerate(r["scores"]) if s >= self.draw_min_score]
            entries.append({"image": image, "gt_labels": gt_labels, "gt_boxes": gt_boxes,
                            "boxes": [r["bboxes"][k] for k in keep], "labels": [r["labels"][k] for k in keep],
                            "scores": [r["scores"][k] for k in keep]})
        if not entries:
            return None
        picture = comparison_grid(entries)
        path = Path(output_dir) / "pictures" / f"{split_name}_{epoch if epoch is not None else 'final'}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
        logger.info("%s: ground truth | predictions saved to %s", split_name, path)
        if "tensorboard" in (self.run_cfg.get("log_backends") or []):
            import numpy as np
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard")) as writer:
                step = epoch if isinstance(epoch, int) else -1
                writer.add_image(f"pictures/{split_name}", np.asarray(picture), step, dataformats="HWC")
        return path
