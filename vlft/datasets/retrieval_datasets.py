"""Image-text retrieval datasets (COCO Karpathy, Flickr30k, your own files).

Annotation records are the captioning ones (``vlft.datasets.caption_datasets``)::

    {"image": path | bytes | ..., "caption": str | [str, ...], "image_id": hashable (optional)}

- Training reuses :class:`~vlft.datasets.caption_datasets.CaptionDataset` unchanged:
  one item per (image, caption), ``{"image", "text_input", "image_id", "instance_id"}``
  with ``image_id`` the image's contiguous index in the split, which the contrastive
  (ITC) loss uses to treat the captions of one image as positives of each other.
- :class:`RetrievalEvalDataset` (val/test) is LAVIS's retrieval evaluation layout:
  the loader walks the *images*, one item ``{"image", "index", "instance_id"}`` each,
  while every caption sits, already cleaned by the eval text processor, in the
  attribute ``text``; ``img2txt`` / ``txt2img`` say which texts belong to which image,
  so a retrieval task can embed all texts once and score recall@k both ways. Records
  that share an image (same ``image_id``, else same image path) are grouped.

An item whose image cannot be read is ``None``; the runner drops and counts it.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Optional

from vlft.datasets.caption_datasets import CaptionEvalDataset
from vlft.datasets.caption_sources import read_coco_karpathy, read_custom


class RetrievalEvalDataset(CaptionEvalDataset):
    """Validation / test split for retrieval: one item per image, all captions in ``text``.

    Attributes (fixed when the dataset is built):

    - ``text``: every caption of the split, eval-processed, image by image;
    - ``image``: each image's source as its record holds it (a path relative to the
      image root, bytes, ...), in item order;
    - ``img2txt``: image index -> indices into ``text`` of its captions;
    - ``txt2img``: text index -> the index of its image;
    - ``image_ids``: each image's record id (``image_id``, else its path).
    """

    def _index(self) -> None:
        super()._index()  # groups the records by image: image_ids, _first_record, _captions
        self.image: List[Any] = [self.records[r]["image"] for r in self._first_record]
        self.text: List[str] = []
        self.img2txt: Dict[int, List[int]] = {}
        self.txt2img: Dict[int, int] = {}
        for img_index, captions in enumerate(self._captions):
            self.img2txt[img_index] = list(range(len(self.text), len(self.text) + len(captions)))
            self.txt2img.update({t: img_index for t in self.img2txt[img_index]})
            self.text.extend(self.text_processor(c) if self.text_processor is not None else c for c in captions)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        item = super().__getitem__(index)
        if item is None:
            return None
        return {"image": item["image"], "index": int(index), "instance_id": item["instance_id"]}


FLICKR_NOTE = (
    "flickr30k uses the same layout: LAVIS's flickr30k_{train,val,test}.json from "
    "https://storage.googleapis.com/sfr-vision-language-research/datasets/, images such as "
    "'flickr30k-images/1000092795.jpg' under build_info.images.storage"
)

read_coco_retrieval = functools.partial(read_coco_karpathy, source="coco_retrieval")
read_retrieval_custom = functools.partial(read_custom, source="retrieval_custom")


def read_flickr30k(split, info, build_info, run_cfg):
    """LAVIS's Flickr30k JSON (the Karpathy layout), errors naming ``flickr30k``."""
    try:
        return read_coco_karpathy(split, info, build_info, run_cfg, source="flickr30k")
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{err} ({FLICKR_NOTE})") from None
