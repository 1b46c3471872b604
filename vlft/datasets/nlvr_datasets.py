"""NLVR2 (Suhr et al., "A Corpus for Reasoning About Natural Language Grounded in
Photographs", ACL 2019): is a sentence true of a pair of images? LAVIS's file format
(``nlvr/annotations/{train,dev,test}.json``, hosted under
https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/nlvr/)::

    {"images": ["images/train/12/train-10171-0-img0.png", "images/train/12/train-10171-0-img1.png"],
     "sentence": "The left image contains twice the number of dogs as the right image.",
     "label": "True"}                                             # or "False"

Items are ``{"image0", "image1", "text_input", "label" (1 for "True", 0 for "False"),
"instance_id" (the record's position, a string)}``, batched with the images stacked,
``label`` a LongTensor and the sentences and ids as lists.

Training items are augmented as LAVIS's ``NLVRDataset._flip`` does: with probability
1/2 the images are swapped, and when the (processed) sentence mentions "left" or
"right" the swap also exchanges those two words, so the statement still holds. As in
LAVIS the exchange is a plain substring replacement ("bright" becomes "bleft"): kept, so
that training sees what LAVIS's does. Evaluation items are never flipped. An image
that cannot be read makes its item ``None`` (dropped and counted by the runner).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch.utils.data import Dataset

from vlft.datasets.caption_sources import _read_json, _require, annotation_files, image_root
from vlft.datasets.image_io import load_image

NLVR_FORMAT = (
    "LAVIS's NLVR2 JSON: a list of records "
    '{"images": ["images/train/12/train-10171-0-img0.png", "images/train/12/train-10171-0-img1.png"], '
    '"sentence": "The left image contains twice the number of dogs as the right image.", "label": "True"} '
    "(label \"True\" or \"False\"; image paths relative to build_info.images.storage)"
)
CLASS_LABELS = {"False": 0, "True": 1}  # LAVIS's NLVRDataset._build_class_labels


def read_nlvr(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
              run_cfg: Mapping[str, Any], source: str = "nlvr") -> Tuple[List[Dict[str, Any]], Path]:
    """Records ``{"images": [left, right], "sentence", "label": 0 | 1}`` of LAVIS's NLVR2 files."""
    files = annotation_files(source, split, info, run_cfg, NLVR_FORMAT)
    root = image_root(source, build_info, run_cfg, required=True)
    records = []
    for path in files:
        data = _read_json(path, source, NLVR_FORMAT)
        if not isinstance(data, list):
            raise ValueError(f"{source}: {path} holds a {type(data).__name__}, not a list; expected {NLVR_FORMAT}")
        for i, ann in enumerate(data):
            _require(ann, ("images", "sentence", "label"), path, i, source, NLVR_FORMAT)
            images = ann["images"]
            if not isinstance(images, (list, tuple)) or len(images) != 2:
                raise ValueError(f"{source}: record {i} of {path}: 'images' must list two image paths, "
                                 f"got {images!r}; expected {NLVR_FORMAT}")
            label = ann["label"]
            key = str(label) if isinstance(label, bool) else label
            if key not in CLASS_LABELS:
                raise ValueError(f"{source}: record {i} of {path}: label {label!r} is not \"True\" or \"False\"")
            records.append({"images": [str(images[0]), str(images[1])], "sentence": ann["sentence"],
                            "label": CLASS_LABELS[key]})
    return records, root


def flip_pair(sample: Dict[str, Any], rng: Callable[[], float] = random.random) -> Dict[str, Any]:
    """LAVIS's training flip of one item (see the module doc); ``rng()`` draws in [0, 1)."""
    sentence = sample["text_input"]
    if rng() < 0.5:
        if "left" in sentence or "right" in sentence:
            sentence = sentence.replace("left", "\0").replace("right", "left").replace("\0", "right")
        sample["image0"], sample["image1"] = sample["image1"], sample["image0"]
        sample["text_input"] = sentence
    return sample


class NLVREvalDataset(Dataset):
    """NLVR2 validation / test: pairs of images and a sentence, never flipped."""

    flip = False

    def __init__(self, vis_processor=None, text_processor=None, split: str = "val",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None, reader: Optional[Callable[..., Any]] = None):
        records, root = (reader or read_nlvr)(split, info or {}, build_info or {}, run_cfg or {})
        self._setup(records, root, vis_processor, text_processor, split)

    @classmethod
    def from_records(cls, records: List[Mapping[str, Any]], image_root: Optional[str] = None, vis_processor=None,
                     text_processor=None, split: str = "val"):
        """A dataset over records ``{"images": [a, b], "sentence", "label": 0 | 1}`` already in memory."""
        self = cls.__new__(cls)
        self._setup(records, image_root, vis_processor, text_processor, split)
        return self

    def _setup(self, records, root, vis_processor, text_processor, split: str) -> None:
        self.records, self.split = list(records), split
        self.image_root = Path(root) if root is not None else None
        self.vis_processor, self.text_processor = vis_processor, text_processor

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, name: str):
        path = self.image_root / name if self.image_root is not None else name
        image = load_image(path)
        if image is None:
            return None
        return self.vis_processor(image) if self.vis_processor is not None else image

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        record = self.records[index]
        image0 = self._image(record["images"][0])
        image1 = self._image(record["images"][1]) if image0 is not None else None
        if image1 is None:
            return None
        sentence = record["sentence"]
        sample = {"image0": image0, "image1": image1,
                  "text_input": self.text_processor(sentence) if self.text_processor is not None else sentence,
                  "label": int(record["label"]), "instance_id": str(index)}
        return flip_pair(sample) if self.flip else sample

    def labels(self) -> Dict[str, int]:
        """``instance_id -> label`` of every item."""
        return {str(i): int(r["label"]) for i, r in enumerate(self.records)}

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """Images stacked (lists without a processor), labels a LongTensor, the rest lists."""
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        batch: Dict[str, Any] = {}
        for key in ("image0", "image1"):
            values = [s[key] for s in samples]
            batch[key] = torch.stack(values) if all(torch.is_tensor(v) for v in values) else values
        batch["text_input"] = [s["text_input"] for s in samples]
        batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        batch["instance_id"] = [s["instance_id"] for s in samples]
        return batch

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, items={len(self)}, image_root={self.image_root})"


class NLVRDataset(NLVREvalDataset):
    """NLVR2 training split: LAVIS's random flip of images (and left / right) per item."""

    flip = True
    uses_global_rng = True  # flip_pair draws from Python's random: the sampler seeds it per item
