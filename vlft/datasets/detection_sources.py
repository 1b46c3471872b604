"""Readers of detection and grounding sources for ``vlft.datasets.detection_datasets``.

Each reader turns one split into a ``DetectionSource``: records, the image root, and the
category names. A record is::

    {"image": path | bytes | PIL | lazy callable, "image_id": int, "prompt": "<OD>",
     "width"/"height": int | None,              # original size, when the source knows it
     "labels": [str], "boxes": [[x0, y0, x1, y1]] # original-image pixels, or
     "bins": [[b0, b1, b2, b3]],                  # loc tokens (florence_jsonl), with
     "target": str,                               # the target text kept verbatim
     "iscrowd": [0 | 1]}                          # COCO crowd regions (never targets)

Formats:

- ``coco_detection``: COCO instances JSON (``images``, ``annotations`` with ``bbox``
  ``[x, y, w, h]``, ``categories`` whose names become the labels) + an image folder.
  Zero-area boxes, boxes that leave the image by more than a pixel, and unknown category
  ids are skipped and counted (a warning says how many and where); boxes within a pixel
  of the border are clamped; crowd regions are kept for the evaluation (COCO ignores
  detections on them) but are not training targets.
- ``florence_jsonl`` / ``hf_florence``: rows ``{"image", "prefix", "suffix"}`` (e.g.
  ``"<OD>"``, ``"car<loc_52><loc_331><loc_243><loc_486>"``). A prefix the processor
  rejects or a box task's suffix that does not parse (a label with 3 loc tokens, text
  without boxes, an inverted box) is an error naming the row.
- ``grounding_jsonl``: ``{"image", "caption", "phrases": [{"phrase", "boxes"}]}`` (or
  one phrase: ``{"image", "phrase", "boxes"}``), pixel boxes ``[x0, y0, x1, y1]``
  (``box_format: xywh`` for COCO-style); the prompt is
  ``<CAPTION_TO_PHRASE_GROUNDING>`` + the caption (default: the phrase).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from vlft.datasets.caption_sources import annotation_files, image_root, option
from vlft.processors.florence2 import BOX_TASKS, construct_prompt, segments, task_token, text_pieces

logger = logging.getLogger(__name__)

COCO_FORMAT = ('COCO instances JSON: {"images": [{"id", "file_name", "width", "height"}], "annotations": '
               '[{"id", "image_id", "category_id", "bbox": [x, y, w, h], "iscrowd"}], "categories": [{"id", "name"}]}')
FLORENCE_FORMAT = ('JSONL rows {"image": "file.jpg", "prefix": "<OD>", "suffix": '
                   '"car<loc_52><loc_331><loc_243><loc_486>..."} (image paths relative to build_info.images.storage)')
GROUNDING_FORMAT = ('JSONL rows {"image", "caption", "phrases": [{"phrase", "boxes": [[x0, y0, x1, y1], ...]}]} '
                    'or {"image", "phrase", "boxes"}')
BORDER_SLACK = 1.0  # pixels a box may leave the image by and be clamped (rounding in annotation tools)


@dataclass
class DetectionSource:
    records: List[Dict[str, Any]]
    image_root: Optional[Path]
    categories: List[str]
    category_ids: Dict[str, int] = field(default_factory=dict)  # name -> id in the source (COCO); else 1..K
    skipped: Counter = field(default_factory=Counter)


def check_box(box: Sequence[float], width: Optional[float], height: Optional[float]) -> Tuple[Optional[List[float]], str]:
    """``(box, "")`` for a usable pixel box (clamped within ``BORDER_SLACK``), else ``(None, why)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return None, "zero_area"
    if width is not None and height is not None:
        if x0 < -BORDER_SLACK or y0 < -BORDER_SLACK or x1 > width + BORDER_SLACK or y1 > height + BORDER_SLACK:
            return None, "outside_image"
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    return [x0, y0, x1, y1], ""


def warn_skipped(source: str, split: str, skipped: Counter, where: Any) -> None:
    if skipped:
        logger.warning("%s/%s: skipped %s in %s", source, split, ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in skipped.items()), where)


def read_coco_detection(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                        run_cfg: Mapping[str, Any]) -> DetectionSource:
    """Records of a COCO instances JSON (see the module docstring)."""
    files = annotation_files("coco_detection", split, info, run_cfg, COCO_FORMAT)
    root = _images(info, build_info, run_cfg, "coco_detection") or files[0].parent
    prompt = option("prompt", info, build_info, "<OD>")
    records, names, ids, skipped = [], [], {}, Counter()
    for path in files:
        data = _json(path, "coco_detection", COCO_FORMAT)
        if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
            raise ValueError(f"coco_detection: {path} needs 'images' and 'categories' lists; expected {COCO_FORMAT}")
        cats = {c["id"]: c["name"] for c in data["categories"]}
        for cid, name in cats.items():
            if name not in ids:
                ids[name] = cid
                names.append(name)
        by_image: Dict[Any, Dict[str, Any]] = {}
        for img in data["images"]:
            by_image[img["id"]] = {"image": img["file_name"], "image_id": img["id"], "prompt": prompt,
                                   "width": img.get("width"), "height": img.get("height"),
                                   "labels": [], "boxes": [], "iscrowd": [], "area": []}
        for i, ann in enumerate(data.get("annotations") or []):
            rec = by_image.get(ann.get("image_id"))
            if rec is None:
                skipped["annotation_of_unknown_image"] += 1
                continue
            if ann.get("category_id") not in cats:
                skipped["unknown_category"] += 1
                continue
            bbox = ann.get("bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
                raise ValueError(f"coco_detection: annotation {i} of {path} has bbox {bbox!r}, not [x, y, w, h]")
            x, y, w, h = (float(v) for v in bbox)
            box, why = check_box([x, y, x + w, y + h], rec["width"], rec["height"])
            if box is None:
                skipped[why] += 1
                continue
            rec["labels"].append(cats[ann["category_id"]])
            rec["boxes"].append(box)
            rec["iscrowd"].append(int(ann.get("iscrowd", 0)))
            rec["area"].append(float(ann["area"]) if ann.get("area") else (box[2] - box[0]) * (box[3] - box[1]))
        records.extend(by_image.values())
    warn_skipped("coco_detection", split, skipped, files)
    return DetectionSource(records, root, names, ids, skipped)


def parse_target(prompt: str, suffix: str, where: str) -> Tuple[List[str], List[List[int]]]:
    """Labels and bins of a box task's target text; an error naming ``where`` when it does not parse."""
    if task_token(prompt) not in BOX_TASKS:
        return [], []
    labels, bins = [], []
    for seg in segments(text_pieces(suffix)):
        label = seg.label.strip()
        if not seg.bins or len(seg.bins) % 4 or not label:
            what = ("text without boxes" if not seg.bins else "an empty label" if not label
                    else f"{len(seg.bins)} loc tokens (a box has 4)")
            raise ValueError(f"{where}: the suffix has {what} at {seg.label!r}; expected label<loc_x0><loc_y0>"
                             f"<loc_x1><loc_y1> per box, e.g. 'car<loc_52><loc_331><loc_243><loc_486>'")
        for k in range(0, len(seg.bins), 4):
            b = seg.bins[k:k + 4]
            if b[2] < b[0] or b[3] < b[1]:
                raise ValueError(f"{where}: box {b} of {label!r} has x1 < x0 or y1 < y0")
            labels.append(label)
            bins.append(b)
    return labels, bins


def florence_record(image: Any, prefix: Any, suffix: Any, image_id: int, where: str) -> Dict[str, Any]:
    if not isinstance(prefix, str) or not isinstance(suffix, str):
        raise ValueError(f"{where}: needs string 'prefix' and 'suffix' columns; expected {FLORENCE_FORMAT}")
    try:
        construct_prompt(prefix)
    except ValueError as err:
        raise ValueError(f"{where}: prefix {prefix!r}: {err}") from None
    labels, bins = parse_target(prefix, suffix, where)
    return {"image": image, "image_id": image_id, "prompt": prefix, "target": suffix, "labels": labels, "bins": bins,
            "width": None, "height": None}


def read_florence_jsonl(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                        run_cfg: Mapping[str, Any]) -> DetectionSource:
    """Records of JSONL ``{"image", "prefix", "suffix"}`` rows (see the module docstring)."""
    files = annotation_files("florence_jsonl", split, info, run_cfg, FLORENCE_FORMAT)
    root = _images(info, build_info, run_cfg, "florence_jsonl") or files[0].parent
    keys = [option(k, info, build_info, d) for k, d in (("image_key", "image"), ("prefix_key", "prefix"), ("suffix_key", "suffix"))]
    records = []
    for path in files:
        for line_no, row in _jsonl(path, "florence_jsonl", FLORENCE_FORMAT):
            where = f"florence_jsonl: {path}:{line_no}"
            if keys[0] not in row:
                raise ValueError(f"{where}: no '{keys[0]}' key; expected {FLORENCE_FORMAT}")
            records.append(florence_record(row[keys[0]], row.get(keys[1]), row.get(keys[2]), len(records), where))
    return DetectionSource(records, root, _categories(records, build_info))


def read_hf_florence(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                     run_cfg: Mapping[str, Any]) -> DetectionSource:
    """Records of a Hugging Face dataset with ``image`` / ``prefix`` / ``suffix`` columns;
    ``split_ratios`` + ``split_seed`` partition one source split reproducibly (the seed
    notebook's ``train_test_split`` by hand, but the same split in every run); a split
    with its own ``annotations.<split>.split`` reads that source split whole."""
    import datasets
    import numpy as np

    from vlft.datasets.hf_source import HFImageRef, _load_split, split_rows

    cols = [option(k, info, build_info, d) for k, d in (("image_column", "image"), ("prefix_column", "prefix"),
                                                        ("suffix_column", "suffix"))]
    # a split that names its own source split (annotations.<split>.split, e.g. the seed's "test") is read whole
    ratios = None if (info or {}).get("split") else build_info.get("split_ratios")
    source_split = option("source_split", {}, build_info, "train") if ratios else option("split", info, {}, split)
    table, label = _load_split(build_info, source_split, run_cfg)
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise ValueError(f"hf_florence: {label} has no column '{missing[0]}'; its columns are "
                         f"{', '.join(table.column_names)} (set build_info.image_column / prefix_column / suffix_column)")
    rows = split_rows(len(table), ratios, int(build_info.get("split_seed", 42)), split) if ratios else np.arange(len(table))
    if isinstance(table.features[cols[0]], datasets.Image):
        table = table.cast_column(cols[0], datasets.Image(decode=False))
    text = table.select_columns(cols[1:]).select(rows).to_dict() if len(rows) else {c: [] for c in cols[1:]}
    images = table.select_columns([cols[0]])
    records = [florence_record(HFImageRef(images, cols[0], int(r), label), p, s, int(r), f"hf_florence: {label} row {int(r)}")
               for r, p, s in zip(rows, text[cols[1]], text[cols[2]])]
    return DetectionSource(records, image_root("hf_florence", build_info, run_cfg, required=False),
                           _categories(records, build_info))


def read_grounding_jsonl(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                         run_cfg: Mapping[str, Any]) -> DetectionSource:
    """Records of phrase-grounding JSONL rows (see the module docstring)."""
    files = annotation_files("grounding_jsonl", split, info, run_cfg, GROUNDING_FORMAT)
    root = _images(info, build_info, run_cfg, "grounding_jsonl") or files[0].parent
    xywh = option("box_format", info, build_info, "xyxy") == "xywh"
    records, skipped = [], Counter()
    for path in files:
        for line_no, row in _jsonl(path, "grounding_jsonl", GROUNDING_FORMAT):
            where = f"grounding_jsonl: {path}:{line_no}"
            phrases = row.get("phrases") or ([{"phrase": row.get("phrase"), "boxes": row.get("boxes")}] if "phrase" in row else None)
            if "image" not in row or not phrases:
                raise ValueError(f"{where}: needs 'image' and 'phrases' (or 'phrase' + 'boxes'); expected {GROUNDING_FORMAT}")
            caption = row.get("caption") or " ".join(str(p.get("phrase")) for p in phrases)
            rec = {"image": row["image"], "image_id": len(records), "prompt": f"<CAPTION_TO_PHRASE_GROUNDING>{caption}",
                   "width": row.get("width"), "height": row.get("height"), "labels": [], "boxes": [], "phrases": []}
            for p in phrases:
                if not isinstance(p.get("phrase"), str) or not p["phrase"].strip() or not p.get("boxes"):
                    raise ValueError(f"{where}: every phrase needs a non-empty 'phrase' and 'boxes'; got {p!r}")
                rec["phrases"].append(p["phrase"].strip())
                for box in p["boxes"]:
                    if len(box) != 4:
                        raise ValueError(f"{where}: box {box!r} of {p['phrase']!r} is not 4 numbers")
                    if xywh:
                        box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
                    kept, why = check_box(box, rec["width"], rec["height"])
                    if kept is None:
                        skipped[why] += 1
                        continue
                    rec["labels"].append(p["phrase"].strip())
                    rec["boxes"].append(kept)
            records.append(rec)
    warn_skipped("grounding_jsonl", split, skipped, files)
    return DetectionSource(records, root, sorted({l for r in records for l in r["labels"]}), skipped=skipped)


def _categories(records: List[Dict[str, Any]], build_info: Mapping[str, Any]) -> List[str]:
    """``build_info.categories`` (checked against the data), else the labels found, sorted."""
    found = sorted({label for r in records for label in r["labels"]})
    given = build_info.get("categories")
    if not given:
        return found
    unknown = [label for label in found if label not in set(given)]
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not in build_info.categories ({', '.join(map(str, given))})")
    return [str(c) for c in given]


def _images(info: Mapping[str, Any], build_info: Mapping[str, Any], run_cfg: Mapping[str, Any], source: str) -> Optional[Path]:
    """The split's ``annotations.<split>.image_root``, else ``build_info.images.storage``."""
    from vlft.common.utils import resolve_data_path

    raw = (info or {}).get("image_root")
    if raw:
        path = resolve_data_path(str(raw), run_cfg)
        if not path.is_dir():
            raise FileNotFoundError(f"{source}: image folder annotations.<split>.image_root='{raw}' not found")
        return path
    return image_root(source, build_info, run_cfg, required=False)


def _json(path: Path, source: str, expected: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: {path} is not valid JSON ({err}); expected {expected}") from None


def _jsonl(path: Path, source: str, expected: str):
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{source}: {path}:{line_no} is not valid JSON ({err}); expected {expected}") from None
            if not isinstance(row, Mapping):
                raise ValueError(f"{source}: {path}:{line_no} holds a {type(row).__name__}, not an object; expected {expected}")
            yield line_no, row
