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

from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Dict, Hashable, Iterator, List, Mapping, Optional, Tuple

from vlft.datasets.caption_datasets import _CaptionBase, captions_of, default_image_id
from vlft.datasets.caption_sources import read_coco_karpathy, read_custom

Reader = Callable[[str, Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], Tuple[Any, Any]]


class RetrievalEvalDataset(_CaptionBase):
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
        groups: "OrderedDict[Hashable, List[int]]" = OrderedDict()
        for i, record in enumerate(self.records):
            groups.setdefault(default_image_id(record, i), []).append(i)
        self.image_ids: List[Hashable] = list(groups)
        self._first_record = [rows[0] for rows in groups.values()]
        self.image: List[Any] = [self.records[r]["image"] for r in self._first_record]
        self.text: List[str] = []
        self.img2txt: Dict[int, List[int]] = {}
        self.txt2img: Dict[int, int] = {}
        for img_index, rows in enumerate(groups.values()):
            self.img2txt[img_index] = []
            for r in rows:
                for caption in captions_of(self.records[r]):
                    self.img2txt[img_index].append(len(self.text))
                    self.txt2img[len(self.text)] = img_index
                    self.text.append(self.text_processor(caption) if self.text_processor is not None else caption)

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        image = self._image(self.records[self._first_record[index]])
        if image is None:
            return None
        return {"image": image, "index": int(index), "instance_id": str(index)}


# --------------------------------------------------------------------------- sources
@contextmanager
def errors_named(source: str, reader_source: str) -> Iterator[None]:
    """Re-label a shared reader's errors: ``read_coco_karpathy`` says "coco_caption: ..."
    and ``read_custom`` "caption_custom: ...", but the user configured ``source``."""
    try:
        yield
    except (FileNotFoundError, ValueError) as err:
        message = str(err)
        if not message.startswith(reader_source + ":"):
            raise
        raise type(err)(source + message[len(reader_source):]) from None


def _relabelled(reader: Reader, source: str, reader_source: str, note: str = "") -> Reader:
    def read(split, info, build_info, run_cfg):
        try:
            with errors_named(source, reader_source):
                return reader(split, info, build_info, run_cfg)
        except (FileNotFoundError, ValueError) as err:
            if not note:
                raise
            raise type(err)(f"{err} ({note})") from None

    read.__doc__ = f"``{reader.__name__}`` with errors naming ``{source}``."
    return read


FLICKR_NOTE = (
    "flickr30k uses the same layout: LAVIS's flickr30k_{train,val,test}.json from "
    "https://storage.googleapis.com/sfr-vision-language-research/datasets/, images such as "
    "'flickr30k-images/1000092795.jpg' under build_info.images.storage"
)

read_coco_retrieval = _relabelled(read_coco_karpathy, "coco_retrieval", "coco_caption")
read_flickr30k = _relabelled(read_coco_karpathy, "flickr30k", "coco_caption", FLICKR_NOTE)
read_retrieval_custom = _relabelled(read_custom, "retrieval_custom", "caption_custom")
