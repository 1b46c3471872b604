"""Retrieval builders: ``coco_retrieval``, ``flickr30k``, ``retrieval_custom``.

Train splits are caption pairs (``CaptionDataset``); val/test splits are
``RetrievalEvalDataset`` (one item per image, every caption in ``.text``, with
``img2txt`` / ``txt2img``). See ``vlft.datasets.retrieval_datasets``. Keys, under
``datasets.<name>.build_info`` (per-split overrides under ``annotations.<split>``):

- ``coco_retrieval``: LAVIS's ``coco_karpathy_{train,val,test}.json`` as
  ``annotations.<split>.storage`` (a path or a list), ``images.storage`` (the COCO
  image root holding ``train2014/`` and ``val2014/``). The same files as ``coco_caption``.
- ``flickr30k``: LAVIS's ``flickr30k_{train,val,test}.json`` (train records
  ``{"image", "caption", "image_id"}``, val/test ``{"image", "caption": [...]}``) and
  ``images.storage`` (the folder holding ``flickr30k-images/``).
- ``retrieval_custom``: ``.json/.jsonl/.csv/.tsv`` files, ``images.storage`` (optional:
  default the annotation file's folder), ``image_key``, ``caption_key``,
  ``image_id_key``, ``format``, ``csv_delimiter`` -- as ``caption_custom``.

Nothing is downloaded; relative paths resolve under the cache root (``run.cache_root``).
"""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import TABLE_KEYS, BaseDatasetBuilder
from vlft.datasets.caption_datasets import CaptionDataset
from vlft.datasets.retrieval_datasets import (
    RetrievalEvalDataset,
    read_coco_retrieval,
    read_flickr30k,
    read_retrieval_custom,
)


class _RetrievalBuilder(BaseDatasetBuilder):
    train_dataset_cls = CaptionDataset
    eval_dataset_cls = RetrievalEvalDataset


@registry.register_builder("coco_retrieval")
class COCORetrievalBuilder(_RetrievalBuilder):
    """COCO image-text retrieval on LAVIS's Karpathy split (files are read, never downloaded)."""

    reader = staticmethod(read_coco_retrieval)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_retrieval/defaults.yaml"}


@registry.register_builder("flickr30k")
class Flickr30kBuilder(_RetrievalBuilder):
    """Flickr30k image-text retrieval in LAVIS's JSON format (files are read, never downloaded)."""

    reader = staticmethod(read_flickr30k)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/flickr30k/defaults.yaml"}


@registry.register_builder("retrieval_custom")
class CustomRetrievalBuilder(_RetrievalBuilder):
    """Your own image-text pairs for retrieval, from JSON / JSONL / CSV files and an image folder."""

    reader = staticmethod(read_retrieval_custom)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/retrieval_custom/defaults.yaml"}
    BUILD_INFO_KEYS = TABLE_KEYS
