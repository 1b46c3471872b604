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

- ``ImageTextPairDataset`` (train): LAVIS's image-text pairs (``vg_caption``,
  ``conceptual_caption_3m`` / ``_12m``, ``sbu_caption``): ``{"image", "text_input",
  "instance_id"}`` without ``image_id``, as LAVIS's ``ImageTextPairDataset``, so that
  pretraining's contrastive loss treats every other caption of the batch as a negative
  (LAVIS masks same-image pairs only where the data gives image ids).

An item whose image cannot be read is ``None`` (see ``vlft.datasets.image_io``).
A source is a reader ``(split, info, build_info, run_cfg) -> (records, image_root)``:
the builder passes it as ``reader=`` (its ``reader`` attribute); a subclass may
override ``read_annotations`` instead.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset
from torch.utils.data.dataloader import default_collate

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
                 run_cfg: Optional[Mapping[str, Any]] = None, reader: Optional[Callable[..., Any]] = None):
        read = reader or self.read_annotations
        records, image_root = read(split, info or {}, build_info or {}, run_cfg or {})
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

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """The batch (see :func:`collate_shared_keys`: the runner collates a mix of
        training datasets with the first one's collater)."""
        return collate_shared_keys(samples)


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


def collate_shared_keys(samples: List[Optional[Mapping[str, Any]]]) -> Dict[str, Any]:
    """``default_collate`` over the keys every sample has (``None`` samples dropped).

    A training mix such as ``coco_caption`` + ``vg_caption`` (BLIP / BLIP-2
    pretraining) batches items with ``image_id`` and items without; LAVIS's
    ``ConcatDataset.collater`` keeps the shared keys only, and so does this."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return {}
    shared = [k for k in samples[0] if all(k in s for s in samples[1:])]
    return default_collate([{k: s[k] for k in shared} for s in samples])


class ImageTextPairDataset(CaptionDataset):
    """Training pairs without image ids (LAVIS's ``ImageTextPairDataset``): see the module doc."""

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        item = super().__getitem__(index)
        if item is not None:
            del item["image_id"]
        return item
