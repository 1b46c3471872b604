"""Captioning builders: ``coco_caption``, ``caption_custom``, ``hf_caption``, ``wds_caption``.

The map-style sources share ``CaptionDataset`` / ``CaptionEvalDataset``; each source
class below only names the reader of its annotations. Keys (under
``datasets.<name>.build_info``; per-split overrides under ``annotations.<split>``):

- ``coco_caption``: ``annotations.<split>.storage`` (Karpathy JSON, a path or list),
  ``images.storage`` (the image root).
- ``caption_custom``: ``annotations.<split>.storage`` (.json/.jsonl/.csv/.tsv),
  ``images.storage`` (optional; default the annotation file's folder), ``image_key``,
  ``caption_key``, ``image_id_key``, ``format``, ``csv_delimiter``.
- ``hf_caption``: ``path``, ``name`` (subset), ``data_dir``, ``data_files``,
  ``revision``, ``cache_dir``, ``trust_remote_code``, ``image_column``,
  ``caption_column``, ``id_column``, ``split_ratios`` + ``split_seed`` +
  ``source_split``, ``annotations.<split>.split`` (the source's split name),
  ``images.storage`` (when the image column holds paths).
- ``wds_caption``: ``annotations.<split>.storage`` (brace pattern or list of tars),
  ``num_samples``, ``image_key``, ``caption_key`` (``txt`` or ``json``),
  ``json_caption_field``, ``shuffle_buffer``, ``repeat``, ``seed``.
"""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset
from vlft.datasets.caption_sources import read_coco_karpathy, read_custom
from vlft.datasets.hf_source import read_hf
from vlft.datasets.wds_dataset import WebDatasetCaptions


class COCOCapDataset(CaptionDataset):
    read_annotations = staticmethod(read_coco_karpathy)


class COCOCapEvalDataset(CaptionEvalDataset):
    read_annotations = staticmethod(read_coco_karpathy)


class CustomCapDataset(CaptionDataset):
    read_annotations = staticmethod(read_custom)


class CustomCapEvalDataset(CaptionEvalDataset):
    read_annotations = staticmethod(read_custom)


class HFCapDataset(CaptionDataset):
    read_annotations = staticmethod(read_hf)


class HFCapEvalDataset(CaptionEvalDataset):
    read_annotations = staticmethod(read_hf)


@registry.register_builder("coco_caption")
class COCOCapBuilder(BaseDatasetBuilder):
    """COCO captions in LAVIS's Karpathy split (files are read, never downloaded)."""

    train_dataset_cls = COCOCapDataset
    eval_dataset_cls = COCOCapEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_caption/defaults.yaml"}


@registry.register_builder("caption_custom")
class CustomCaptionBuilder(BaseDatasetBuilder):
    """Your own image-caption pairs from JSON / JSONL / CSV files and an image folder."""

    train_dataset_cls = CustomCapDataset
    eval_dataset_cls = CustomCapEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/caption_custom/defaults.yaml"}


@registry.register_builder("hf_caption")
class HFCaptionBuilder(BaseDatasetBuilder):
    """A Hugging Face ``datasets`` source (hub id, local files, or a saved dataset)."""

    train_dataset_cls = HFCapDataset
    eval_dataset_cls = HFCapEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/hf_caption/defaults.yaml"}


@registry.register_builder("wds_caption")
class WebDatasetCaptionBuilder(BaseDatasetBuilder):
    """Tar shards streamed with webdataset (an ``IterableDataset`` per split)."""

    train_dataset_cls = WebDatasetCaptions
    eval_dataset_cls = WebDatasetCaptions
    DATASET_CONFIG_DICT = {"default": "configs/datasets/wds_caption/defaults.yaml"}
