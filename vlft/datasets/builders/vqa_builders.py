"""VQA builders: ``coco_vqa`` (LAVIS's VQAv2 files) and ``vqa_custom`` (your own files).

Train splits are ``VQADataset`` (weighted answers, a ``collater`` that flattens them);
val/test splits are ``VQAEvalDataset`` (``ground_truth()``, ``answer_types()``,
``answer_list``). See ``vlft.datasets.vqa_datasets``. Keys, under
``datasets.<name>.build_info`` (per-split overrides under ``annotations.<split>``):

- ``coco_vqa``: ``annotations.<split>.storage`` (LAVIS's ``vqa_*.json``, a path or a
  list; LAVIS's own lists, which also name ``answer_list.json`` and the official
  VQAv2 question / annotation files, are understood), ``images.storage`` (the COCO
  image root holding ``train2014/``, ``val2014/``, ``test2015/``),
  ``answer_list.storage`` (LAVIS's ``answer_list.json``; ``null`` for none).
- ``vqa_custom``: ``.json/.jsonl/.csv/.tsv`` files, ``images.storage`` (optional:
  default the annotation file's folder), ``image_key``, ``question_key``,
  ``answer_key`` (a list, or a string split at ``answer_separator``),
  ``question_id_key`` (default: the running index), ``answer_list.storage``,
  ``format``, ``csv_delimiter``. ``answer_type`` / ``question_type`` columns are kept.

Nothing is downloaded; relative paths resolve under the cache root (``run.cache_root``).
"""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.vqa_datasets import VQADataset, VQAEvalDataset, read_coco_vqa, read_vqa_custom


class COCOVQADataset(VQADataset):
    read_annotations = staticmethod(read_coco_vqa)


class COCOVQAEvalDataset(VQAEvalDataset):
    read_annotations = staticmethod(read_coco_vqa)
    source_name = "coco_vqa"


class CustomVQADataset(VQADataset):
    read_annotations = staticmethod(read_vqa_custom)


class CustomVQAEvalDataset(VQAEvalDataset):
    read_annotations = staticmethod(read_vqa_custom)
    source_name = "vqa_custom"


@registry.register_builder("coco_vqa")
class COCOVQABuilder(BaseDatasetBuilder):
    """VQAv2 on COCO images in LAVIS's JSON format (files are read, never downloaded)."""

    train_dataset_cls = COCOVQADataset
    eval_dataset_cls = COCOVQAEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_vqa/defaults.yaml"}


@registry.register_builder("vqa_custom")
class CustomVQABuilder(BaseDatasetBuilder):
    """Your own image-question-answer data from JSON / JSONL / CSV files and an image folder."""

    train_dataset_cls = CustomVQADataset
    eval_dataset_cls = CustomVQAEvalDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vqa_custom/defaults.yaml"}
