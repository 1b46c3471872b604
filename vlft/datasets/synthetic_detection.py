"""Boxes of the synthetic shapes scenes (``vlft.datasets.synthetic_shapes``), for
detection and grounding demos and tests.

``make_scene(i, seed, size)`` draws two shapes of one size, the first in the left half,
the second in the right. ``scene_boxes`` replays the scene's random draws in the same
order (objects, background, size, then each object's corner) and returns each object's
class ("red circle", ...) and box ``[x0, y0, x1, y1]`` in continuous pixel coordinates:
PIL fills the corner pixels inclusively, so a shape drawn from ``x0`` to ``x0 + s``
covers ``[x0, x0 + s + 1)``. A test checks the boxes against the drawn pixels.

Writers lay the same scenes out as the file formats the builders read:
``write_coco_detection`` (COCO instances JSON + PNG folder), ``write_florence_jsonl``
(``{"image", "prefix", "suffix"}`` with ``<loc_N>`` tokens, the layout of the widely used
Florence-2 fine-tuning datasets) and ``write_grounding_jsonl`` (``{"image", "caption",
"phrases": [{"phrase", "boxes"}]}``).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Tuple

from vlft.datasets.synthetic_shapes import CLASSES, COLOURS, SHAPES, make_scene

SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # as the synthetic_shapes builder


def scene_boxes(index: int, seed: int = 0, image_size: int = 64) -> List[Tuple[str, List[float]]]:
    """``[(class, [x0, y0, x1, y1]), ...]`` of scene ``index``: left object first."""
    rng = random.Random(seed * 1_000_003 + index)
    objects = [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(2)]
    for _ in range(3):  # the background colour
        rng.randint(225, 255)
    half = image_size // 2
    size = int(image_size * rng.uniform(0.28, 0.4))
    out = []
    for slot, (colour, shape) in enumerate(objects):
        x0 = slot * half + rng.randint(1, max(half - size - 1, 1))
        y0 = rng.randint(1, image_size - size - 1)
        out.append((f"{colour} {shape}", [float(x0), float(y0), float(x0 + size + 1), float(y0 + size + 1)]))
    return out


def scene_record(index: int, seed: int = 0, image_size: int = 64) -> Dict:
    """A detection record of scene ``index`` (the image is drawn when first read)."""
    objects = scene_boxes(index, seed, image_size)
    return {"image": _Draw(index, seed, image_size), "image_id": index, "width": image_size, "height": image_size,
            "labels": [c for c, _ in objects], "boxes": [b for _, b in objects]}


class _Draw:
    """A picklable lazy image (DataLoader workers draw their own)."""

    def __init__(self, index: int, seed: int, image_size: int):
        self.index, self.seed, self.image_size = index, seed, image_size

    def __call__(self):
        return make_scene(self.index, self.seed, self.image_size)["image"]

    def __repr__(self) -> str:
        return f"shapes scene {self.index} (seed {self.seed})"


def _write_images(root: Path, split: str, n: int, seed: int, image_size: int) -> List[Tuple[str, int, list]]:
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        index = SPLIT_OFFSET.get(split, 3_000_000) + i
        name = f"{split}_{i:05d}.png"
        make_scene(index, seed, image_size)["image"].save(folder / name)
        rows.append((f"images/{name}", index, scene_boxes(index, seed, image_size)))  # relative to root
    return rows


def write_coco_detection(root, split: str, n: int, seed: int = 0, image_size: int = 64) -> Path:
    """``root/images/*.png`` and ``root/instances_<split>.json`` (COCO boxes ``[x, y, w, h]``)."""
    root = Path(root)
    rows = _write_images(root, split, n, seed, image_size)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for image_id, (name, _, objects) in enumerate(rows, start=1):
        images.append({"id": image_id, "file_name": name, "width": image_size, "height": image_size})
        for label, (x0, y0, x1, y1) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[label],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    path = root / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_florence_jsonl(root, split: str, n: int, seed: int = 0, image_size: int = 64, prefix: str = "<OD>") -> Path:
    """``root/images/*.png`` and ``root/<split>.jsonl`` of ``{"image", "prefix", "suffix"}``."""
    from vlft.processors.florence2 import boxes_to_text

    root = Path(root)
    rows = _write_images(root, split, n, seed, image_size)
    path = root / f"{split}.jsonl"
    with open(path, "w") as f:
        for name, _, objects in rows:
            suffix = boxes_to_text([c for c, _ in objects], [b for _, b in objects], (image_size, image_size))
            f.write(json.dumps({"image": name, "prefix": prefix, "suffix": suffix}) + "\n")
    return path


def write_grounding_jsonl(root, split: str, n: int, seed: int = 0, image_size: int = 64) -> Path:
    """``root/grounding_<split>.jsonl``: each scene's caption and the box of each of its two phrases."""
    root = Path(root)
    rows = _write_images(root, split, n, seed, image_size)
    path = root / f"grounding_{split}.jsonl"
    with open(path, "w") as f:
        for name, _, objects in rows:
            (c0, b0), (c1, b1) = objects
            phrases = [{"phrase": f"a {c0}", "boxes": [b0]}, {"phrase": f"a {c1}", "boxes": [b1]}]
            f.write(json.dumps({"image": name, "caption": f"a {c0} to the left of a {c1}", "phrases": phrases}) + "\n")
    return path
