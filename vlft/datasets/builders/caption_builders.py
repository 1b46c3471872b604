"""Captioning builders: ``coco_caption``, ``caption_custom``, ``hf_caption``, ``wds_caption``,
``nocaps`` (evaluation only) and LAVIS's image-text pair sources for pretraining
(``vg_caption``, ``conceptual_caption_3m``, ``conceptual_caption_12m``, ``sbu_caption``).

The map-style sources share ``CaptionDataset`` / ``CaptionEvalDataset`` (the pairs:
``ImageTextPairDataset``, which gives no ``image_id``, as LAVIS's); each builder only
names the reader of its annotations. Keys (under ``datasets.<name>.build_info``;
per-split overrides under ``annotations.<split>``):

- ``coco_caption``: ``annotations.<split>.storage`` (Karpathy JSON, a path or list),
  ``images.storage`` (the image root).
- ``nocaps``: LAVIS's ``nocaps_{val,test}.json`` (``{"image", "img_id"}`` records; the
  image id is ``img_id``) and ``images.storage``; val / test splits only.
- ``vg_caption``, ``conceptual_caption_3m`` / ``_12m``, ``sbu_caption`` (training only):
  LAVIS's JSON lists of ``{"image", "caption"}`` and ``images.storage``.
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

Nothing is downloaded; relative paths resolve under the cache root (``run.cache_root``).
"""
from __future__ import annotations

import functools

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import HF_SOURCE_KEYS, TABLE_KEYS, BaseDatasetBuilder
from vlft.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset, ImageTextPairDataset
from vlft.datasets.caption_sources import read_coco_karpathy, read_custom, read_image_text_pairs, read_nocaps
from vlft.datasets.hf_source import read_hf, with_ratio_splits
from vlft.datasets.wds_dataset import WebDatasetCaptions


class _CaptionBuilder(BaseDatasetBuilder):
    train_dataset_cls = CaptionDataset
    eval_dataset_cls = CaptionEvalDataset


@registry.register_builder("coco_caption")
class COCOCapBuilder(_CaptionBuilder):
    """COCO captions in LAVIS's Karpathy split (files are read, never downloaded)."""

    reader = staticmethod(read_coco_karpathy)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_caption/defaults.yaml"}


@registry.register_builder("caption_custom")
class CustomCaptionBuilder(_CaptionBuilder):
    """Your own image-caption pairs from JSON / JSONL / CSV files and an image folder."""

    reader = staticmethod(read_custom)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/caption_custom/defaults.yaml"}
    BUILD_INFO_KEYS = TABLE_KEYS


@registry.register_builder("hf_caption")
class HFCaptionBuilder(_CaptionBuilder):
    """A Hugging Face ``datasets`` source (hub id, local files, or a saved dataset)."""

    reader = staticmethod(read_hf)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/hf_caption/defaults.yaml"}
    BUILD_INFO_KEYS = HF_SOURCE_KEYS
    SPLIT_KEYS = ("split",)  # the source split a split reads (without split_ratios)

    def build(self):
        self.config = with_ratio_splits(self.config)  # split_ratios alone names the splits
        return super().build()


@registry.register_builder("wds_caption")
class WebDatasetCaptionBuilder(BaseDatasetBuilder):
    """Tar shards streamed with webdataset (an ``IterableDataset`` per split)."""

    train_dataset_cls = WebDatasetCaptions
    eval_dataset_cls = WebDatasetCaptions
    DATASET_CONFIG_DICT = {"default": "configs/datasets/wds_caption/defaults.yaml"}
    BUILD_INFO_KEYS = ("seed",)
    SPLIT_KEYS = ("num_samples",)


@registry.register_builder("nocaps")
class NoCapsBuilder(BaseDatasetBuilder):
    """NoCaps (novel object captioning) val / test in LAVIS's JSON: evaluation only."""

    eval_dataset_cls = CaptionEvalDataset
    reader = staticmethod(read_nocaps)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/nocaps/defaults.yaml"}


class _PairsBuilder(BaseDatasetBuilder):
    """LAVIS's image-text pairs (training only)."""

    train_dataset_cls = ImageTextPairDataset


@registry.register_builder("vg_caption")
class VGCaptionBuilder(_PairsBuilder):
    """Visual Genome region descriptions as image-text pairs (BLIP / BLIP-2 pretraining)."""

    reader = functools.partial(read_image_text_pairs, source="vg_caption")
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vg_caption/defaults.yaml"}


@registry.register_builder("conceptual_caption_3m")
class ConceptualCaption3MBuilder(_PairsBuilder):
    """Conceptual Captions 3M as image-text pairs (BLIP pretraining)."""

    reader = functools.partial(read_image_text_pairs, source="conceptual_caption_3m")
    DATASET_CONFIG_DICT = {"default": "configs/datasets/conceptual_caption_3m/defaults.yaml"}


@registry.register_builder("conceptual_caption_12m")
class ConceptualCaption12MBuilder(_PairsBuilder):
    """Conceptual 12M as image-text pairs (BLIP pretraining)."""

    reader = functools.partial(read_image_text_pairs, source="conceptual_caption_12m")
    DATASET_CONFIG_DICT = {"default": "configs/datasets/conceptual_caption_12m/defaults.yaml"}


@registry.register_builder("sbu_caption")
class SBUCaptionBuilder(_PairsBuilder):
    """SBU Captions as image-text pairs (BLIP pretraining)."""

    reader = functools.partial(read_image_text_pairs, source="sbu_caption")
    DATASET_CONFIG_DICT = {"default": "configs/datasets/sbu_caption/defaults.yaml"}
