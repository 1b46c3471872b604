"""Image-caption datasets shared by every captioning source.

A source (LAVIS Karpathy JSON, custom JSON/JSONL/CSV, Hugging Face ``datasets``)
only reads its annotation records; these two classes do the rest::

    {"image": path | bytes | PIL.Image | {"bytes", "path"} | lazy callable,
     "caption": str | [str, ...],
     "image_id": hashable}           # optional: derived from the image path when absent

- ``CaptionDataset`` (train): one item per (image, caption) pair,
  ``{"image", "text_input", "image_id", "instance_id"}``. As in LAVIS, ``image_id`` is
  the image's contiguous index in this split (``img_ids`` maps the record ids to it),
  so it collates to a tensor that contrastive losses can use.
- ``CaptionEvalDataset`` (val/test): one item per image, ``{"image", "image_id",
  "instance_id"}`` with the record's own ``image_id``; records that share an image
  are grouped and ``ground_truth()`` gives all their raw captions for scoring.

An item whose image cannot be read is ``None`` (see ``vlft.datasets.image_io``).
A subclass per source only overrides ``read_annotations``.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from vlft.datasets.image_io import load_image

Records = Sequence[Mapping[str, Any]]


def captions_of(record: Mapping[str, Any]) -> List[str]:
    """A record's caption(s) as a list of strings."""
    caption = record.get("caption")
    if caption is None:
        return []
    if isinstance(caption, str):
        return [caption]
    return [str(c) for c in caption]


def default_image_id(record: Mapping[str, Any], index: int) -> Hashable:
    """The record's ``image_id``, else its image path, else its position."""
    if record.get("image_id") is not None:
        return record["image_id"]
    image = record.get("image")
    return str(image) if isinstance(image, (str, Path)) else index


class _CaptionBase(Dataset):
    def __init__(self, vis_processor=None, text_processor=None, split: str = "train",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None):
        records, image_root = self.read_annotations(split, info or {}, build_info or {}, run_cfg or {})
        self._setup(records, image_root, vis_processor, text_processor, split)

    @classmethod
    def from_records(cls, records: Records, image_root: Optional[str] = None, vis_processor=None,
                     text_processor=None, split: str = "train"):
        """A dataset over records already in memory (notebooks, tests, new sources)."""
        self = cls.__new__(cls)
        self._setup(records, image_root, vis_processor, text_processor, split)
        return self

    @staticmethod
    def read_annotations(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                         run_cfg: Mapping[str, Any]) -> Tuple[Records, Optional[Path]]:
        """``(records, image_root)`` of ``split``; each source overrides this."""
        raise NotImplementedError(
            "a caption dataset needs a source: use a registered builder (coco_caption, caption_custom, "
            "hf_caption) or CaptionDataset.from_records(records, image_root)"
        )

    def _setup(self, records: Records, image_root, vis_processor, text_processor, split: str) -> None:
        self.records, self.split = records, split
        self.image_root = Path(image_root) if image_root is not None else None
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self._index()

    def _index(self) -> None:
        raise NotImplementedError

    def _image(self, record: Mapping[str, Any]):
        """The record's image, processed, or ``None`` when it cannot be read."""
        source = record["image"]
        if isinstance(source, (str, Path)) and self.image_root is not None:
            source = self.image_root / source  # an absolute path stays absolute
        image = load_image(source)
        if image is None:
            return None
        return self.vis_processor(image) if self.vis_processor is not None else image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, items={len(self)}, image_root={self.image_root})"


class CaptionDataset(_CaptionBase):
    """Training split: one item per (image, caption) pair."""

    def _index(self) -> None:
        self.img_ids: Dict[Hashable, int] = {}
        record_of, caption_of, single = [], [], True
        for i, record in enumerate(self.records):
            n = len(captions_of(record))
            single = single and n == 1 and isinstance(record.get("caption"), str)
            record_of.extend([i] * n)
            caption_of.extend(range(n))
            self.img_ids.setdefault(default_image_id(record, i), len(self.img_ids))
        # one caption per record (the usual case): the item index is the record index
        self._pairs = None if single else (np.asarray(record_of, np.int64), np.asarray(caption_of, np.int64))
        self._length = len(record_of)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        if self._pairs is None:
            rec_idx, cap_idx = int(index), 0
        else:
            rec_idx, cap_idx = int(self._pairs[0][index]), int(self._pairs[1][index])
        record = self.records[rec_idx]
        image = self._image(record)
        if image is None:
            return None
        caption = captions_of(record)[cap_idx]
        return {
            "image": image,
            "text_input": self.text_processor(caption) if self.text_processor is not None else caption,
            "image_id": self.img_ids[default_image_id(record, rec_idx)],
            "instance_id": str(index),
        }


class CaptionEvalDataset(_CaptionBase):
    """Validation / test split: one item per image, all its reference captions kept."""

    def _index(self) -> None:
        groups: "OrderedDict[Hashable, List[int]]" = OrderedDict()
        for i, record in enumerate(self.records):
            groups.setdefault(default_image_id(record, i), []).append(i)
        self.image_ids: List[Hashable] = list(groups)
        self._first_record = [rows[0] for rows in groups.values()]
        self._captions = [[c for r in rows for c in captions_of(self.records[r])] for rows in groups.values()]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        image = self._image(self.records[self._first_record[index]])
        if image is None:
            return None
        return {"image": image, "image_id": self.image_ids[index], "instance_id": str(index)}

    def ground_truth(self) -> Dict[Hashable, List[str]]:
        """``image_id -> [raw reference captions]`` for scoring generated captions."""
        return dict(zip(self.image_ids, self._captions))
