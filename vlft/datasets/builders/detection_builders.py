"""Detection and grounding builders for prompted (Florence-2) training: ``coco_detection``,
``florence_jsonl``, ``hf_florence``, ``grounding_jsonl`` and the synthetic
``shapes_detection``. They share ``DetectionDataset`` / ``DetectionEvalDataset`` and
differ only in their reader (formats: ``vlft.datasets.detection_sources``).

Keys under ``datasets.<name>.build_info`` (per-split overrides under ``annotations.<split>``):

- ``coco_detection``: ``annotations.<split>.storage`` (instances JSON), ``images.storage``
  (default: the JSON's folder) or ``annotations.<split>.image_root``, ``prompt`` (``<OD>``).
- ``florence_jsonl``: ``annotations.<split>.storage`` (JSONL), ``images.storage``,
  ``image_key`` / ``prefix_key`` / ``suffix_key``, ``categories`` (optional, checked).
- ``hf_florence``: as ``hf_caption`` (``path``, ``name``, ``data_files``, ``split_ratios`` +
  ``split_seed`` + ``source_split``, ``annotations.<split>.split``) with
  ``image_column`` / ``prefix_column`` / ``suffix_column``.
- ``grounding_jsonl``: ``annotations.<split>.storage``, ``images.storage``, ``box_format``
  (``xyxy`` | ``xywh``).
- ``shapes_detection``: ``annotations.<split>.num_samples``, ``seed``, ``image_size``,
  ``prompt`` (``<OD>`` or ``<CAPTION_TO_PHRASE_GROUNDING>``).
"""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import HF_SOURCE_KEYS, BaseDatasetBuilder
from vlft.datasets.detection_datasets import DetectionDataset, DetectionEvalDataset, read_shapes_detection
from vlft.datasets.detection_sources import (read_coco_detection, read_florence_jsonl, read_grounding_jsonl,
                                             read_hf_florence)


class _DetectionBuilder(BaseDatasetBuilder):
    train_dataset_cls = DetectionDataset
    eval_dataset_cls = DetectionEvalDataset
    BUILD_INFO_KEYS = ("prompt", "categories")
    SPLIT_KEYS = ("image_root",)


@registry.register_builder("coco_detection")
class COCODetectionBuilder(_DetectionBuilder):
    """COCO instances JSON + image folder; category names from the file."""

    reader = staticmethod(read_coco_detection)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_detection/defaults.yaml"}


@registry.register_builder("florence_jsonl")
class FlorenceJsonlBuilder(_DetectionBuilder):
    """JSONL rows ``{"image", "prefix", "suffix"}`` with ``<loc_N>`` tokens (the seed's layout)."""

    reader = staticmethod(read_florence_jsonl)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/florence_jsonl/defaults.yaml"}


@registry.register_builder("hf_florence")
class HFFlorenceBuilder(_DetectionBuilder):
    """A Hugging Face ``datasets`` source with ``image`` / ``prefix`` / ``suffix`` columns."""

    reader = staticmethod(read_hf_florence)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/hf_florence/defaults.yaml"}
    BUILD_INFO_KEYS = HF_SOURCE_KEYS
    SPLIT_KEYS = ("split",)


@registry.register_builder("grounding_jsonl")
class GroundingJsonlBuilder(_DetectionBuilder):
    """Phrase grounding: JSONL rows of an image, a caption and each phrase's boxes."""

    reader = staticmethod(read_grounding_jsonl)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/grounding_jsonl/defaults.yaml"}


@registry.register_builder("shapes_detection")
class ShapesDetectionBuilder(_DetectionBuilder):
    """The synthetic shapes scenes with every object's box (demos and tests)."""

    reader = staticmethod(read_shapes_detection)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/shapes_detection/defaults.yaml"}
