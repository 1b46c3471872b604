"""Detection and grounding datasets for Florence-2 style prompted training.

A source (``vlft.datasets.detection_sources``) reads records; these classes serve them:

- ``DetectionDataset`` (train): ``{"image", "text_input": prompt, "text_output": target,
  "image_id", "instance_id"}``. The target is the record's own text when it has one and
  the image is not augmented (``florence_jsonl``: the suffix, verbatim); otherwise it is
  built from the pixel boxes after the image processor moved them
  (``florence2_image_train.with_boxes``: flips, crops), by the processor's quantisation
  (``boxes_to_text``). Crowd regions are never targets. Samples whose prompt or target
  says "left" / "right" are not flipped.
- ``DetectionEvalDataset`` (val/test): ``{"image", "prompt", "image_id",
  "orig_size": [width, height], "instance_id"}``; ``ground_truth()`` gives the split in
  COCO format (annotation ids renumbered from 1: pycocotools treats id 0 as unmatched),
  ``instance_targets()`` the labels and boxes per item (grounding), ``raw(i)`` the
  original image and its boxes (the evaluation pictures).

Boxes from loc tokens (``bins``) are placed at the bins' centres in the original image
(``vlft.processors.florence2.dequantize``). Items whose image cannot be read are ``None``.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlft.datasets.caption_datasets import collate_shared_keys
from vlft.datasets.detection_sources import DetectionSource
from vlft.datasets.image_io import load_image
from vlft.processors.florence2 import boxes_to_text, dequantize, mentions_sides

logger = logging.getLogger(__name__)


class DetectionDataset(Dataset):
    """Training split (see the module docstring)."""

    def __init__(self, vis_processor=None, text_processor=None, split: str = "train",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None, reader: Optional[Callable[..., DetectionSource]] = None):
        if reader is None:
            raise TypeError(f"{type(self).__name__} needs a reader (use a registered detection builder)")
        self._setup(reader(split, info or {}, build_info or {}, run_cfg or {}), vis_processor, split)

    @classmethod
    def from_source(cls, source: DetectionSource, vis_processor=None, split: str = "train"):
        """A dataset over records already read (notebooks, tests)."""
        self = cls.__new__(cls)
        self._setup(source, vis_processor, split)
        return self

    def _setup(self, source: DetectionSource, vis_processor, split: str) -> None:
        self.source, self.records, self.split = source, source.records, split
        self.image_root = Path(source.image_root) if source.image_root is not None else None
        self.categories = list(source.categories)
        self.vis_processor = vis_processor
        self._sizes: Dict[int, Tuple[int, int]] = {}
        self.unflipped = 0  # samples kept unflipped because their text names a side

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Optional[Image.Image]:
        source = self.records[index]["image"]
        if isinstance(source, (str, Path)) and self.image_root is not None:
            source = self.image_root / source
        return load_image(source)

    def boxes(self, index: int, size: Tuple[float, float]) -> Tuple[List[str], List[List[float]]]:
        """The record's target labels and pixel boxes in an image of ``size`` (crowd regions left out)."""
        rec = self.records[index]
        if rec.get("bins"):
            return list(rec["labels"]), dequantize(rec["bins"], size).tolist()
        crowd = rec.get("iscrowd") or [0] * len(rec.get("labels", []))
        pairs = [(l, b) for l, b, c in zip(rec.get("labels", []), rec.get("boxes", []), crowd) if not c]
        return [l for l, _ in pairs], [b for _, b in pairs]

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        rec = self.records[index]
        image = self.load(index)
        if image is None:
            return None
        prompt = rec["prompt"]
        vis = self.vis_processor
        augments = bool(getattr(vis, "augments", False))
        if rec.get("target") is not None and not (augments and rec.get("bins")):
            target = rec["target"]
            if augments:  # an image-only task: only the image moves
                tensor = vis.with_boxes(image, torch.zeros(0, 4), [], allow_flip=not mentions_sides(prompt, target))[0]
            else:
                tensor = vis(image) if vis is not None else image
        else:
            labels, boxes = self.boxes(index, image.size)
            if not hasattr(vis, "with_boxes"):
                raise TypeError(f"{type(self).__name__}: boxes need an image processor that moves them "
                                f"(florence2_image_train / florence2_image_eval), got {type(vis).__name__}")
            allow_flip = not mentions_sides(prompt, *labels)
            self.unflipped += int(augments and not allow_flip)
            tensor, moved, labels, size = vis.with_boxes(image, boxes, labels, allow_flip=allow_flip)
            target = boxes_to_text(labels, moved, size)
        return {"image": tensor, "text_input": prompt, "text_output": target, "image_id": rec["image_id"],
                "instance_id": str(index)}

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        return collate_shared_keys(samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, items={len(self)}, categories={len(self.categories)})"


class DetectionEvalDataset(DetectionDataset):
    """Validation / test split (see the module docstring)."""

    def image_size(self, index: int) -> Tuple[int, int]:
        """``(width, height)`` of the original image (from the source, else the file)."""
        rec = self.records[index]
        if rec.get("width") and rec.get("height"):
            return int(rec["width"]), int(rec["height"])
        if index not in self._sizes:
            source = rec["image"]
            if isinstance(source, (str, Path)):
                path = self.image_root / source if self.image_root is not None else Path(source)
                try:
                    with Image.open(path) as img:  # the header only
                        self._sizes[index] = img.size
                except (OSError, ValueError):
                    self._sizes[index] = (0, 0)
            else:
                image = self.load(index)
                self._sizes[index] = image.size if image is not None else (0, 0)
        return self._sizes[index]

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        rec = self.records[index]
        image = self.load(index)
        if image is None:
            return None
        self._sizes.setdefault(index, image.size)
        tensor = self.vis_processor(image) if self.vis_processor is not None else image
        return {"image": tensor, "prompt": rec["prompt"], "image_id": rec["image_id"],
                "orig_size": torch.tensor(image.size, dtype=torch.float32), "instance_id": index}

    def instance_targets(self) -> Dict[int, Dict[str, Any]]:
        """Per item (``instance_id``): the labels / phrases, pixel boxes and image size."""
        out = {}
        for i, rec in enumerate(self.records):
            size = self.image_size(i)
            labels, boxes = self.boxes(i, size)
            out[i] = {"labels": labels, "boxes": boxes, "size": size, "phrases": rec.get("phrases") or sorted(set(labels))}
        return out

    def ground_truth(self) -> Dict[str, Any]:
        """The split in COCO format (``images``, ``annotations`` with ``[x, y, w, h]`` boxes, ``categories``)."""
        ids = self.source.category_ids or {name: i + 1 for i, name in enumerate(self.categories)}
        images, annotations, skipped = [], [], Counter()
        for i, rec in enumerate(self.records):
            w, h = self.image_size(i)
            images.append({"id": rec["image_id"], "width": w, "height": h})
            labels, boxes = (rec["labels"], dequantize(rec["bins"], (w, h)).tolist()) if rec.get("bins") else (
                rec.get("labels", []), rec.get("boxes", []))
            crowd = rec.get("iscrowd") or [0] * len(labels)
            areas = rec.get("area") or [None] * len(labels)
            for label, (x0, y0, x1, y1), c, area in zip(labels, boxes, crowd, areas):
                if x1 <= x0 or y1 <= y0:  # e.g. loc tokens x0 == x1: no prediction can overlap it
                    skipped["zero_area"] += 1
                    continue
                if label not in ids:
                    skipped["unknown_label"] += 1
                    continue
                annotations.append({"id": len(annotations) + 1, "image_id": rec["image_id"], "category_id": ids[label],
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(c),
                                    "area": float(area) if area else (x1 - x0) * (y1 - y0)})
        if skipped:
            logger.warning("%s: ground truth skips %s", self.split, dict(skipped))
        categories = [{"id": ids[name], "name": name} for name in self.categories]
        return {"images": images, "annotations": annotations, "categories": categories}

    def raw(self, index: int) -> Tuple[Optional[Image.Image], List[str], List[List[float]]]:
        """The original image and its ground-truth labels and pixel boxes (for pictures)."""
        image = self.load(index)
        if image is None:
            return None, [], []
        labels, boxes = self.boxes(index, image.size)
        return image, labels, boxes


def read_shapes_detection(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                          run_cfg: Mapping[str, Any]) -> DetectionSource:
    """The synthetic shapes scenes with their boxes (``shapes_detection``): ``num_samples``
    per split, ``seed``, ``image_size``; ``prompt`` ``<OD>`` (the scene's two objects) or
    ``<CAPTION_TO_PHRASE_GROUNDING>`` (the scene's caption, each object's phrase); ``labels``
    ``colour_shape`` (nine classes, "red circle") or ``shape`` (three: "circle")."""
    from vlft.datasets.synthetic_detection import SPLIT_OFFSET, scene_record
    from vlft.datasets.synthetic_shapes import CLASSES, SHAPES

    if "num_samples" not in (info or {}):
        raise ValueError(f"shapes_detection: build_info.annotations.{split}.num_samples is not set")
    seed, size = int(build_info.get("seed", 0)), int(build_info.get("image_size", 64))
    prompt = str(build_info.get("prompt", "<OD>"))
    labels = str(build_info.get("labels", "colour_shape"))
    if labels not in ("colour_shape", "shape"):
        raise ValueError(f"shapes_detection: build_info.labels must be colour_shape or shape, got {labels!r}")
    offset = SPLIT_OFFSET.get(split, 3_000_000)
    records = [scene_record(offset + i, seed, size) for i in range(int(info["num_samples"]))]
    for rec in records:
        rec["prompt"] = prompt
        if labels == "shape":
            rec["labels"] = [label.split()[1] for label in rec["labels"]]
        if prompt.startswith("<CAPTION_TO_PHRASE_GROUNDING>"):
            (c0, c1), phrases = rec["labels"], [f"a {c}" for c in rec["labels"]]
            rec.update(prompt=f"{prompt}a {c0} to the left of a {c1}", labels=phrases, phrases=phrases)
    if prompt != "<OD>":
        categories = sorted({l for r in records for l in r["labels"]})
    else:
        categories = list(CLASSES) if labels == "colour_shape" else list(SHAPES)
    return DetectionSource(records, None, categories)
