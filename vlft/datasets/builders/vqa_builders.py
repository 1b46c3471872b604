"""VQA builders: ``coco_vqa`` (VQAv2), ``ok_vqa``, ``aok_vqa``, ``gqa``, ``vg_vqa`` (LAVIS's
files) and ``vqa_custom`` (your own files).

Train splits are ``VQADataset`` (weighted answers, a ``collater`` that flattens them);
val/test splits are ``VQAEvalDataset`` (``ground_truth()``, ``answer_types()``,
``answer_list``; A-OKVQA's also give ``choices``). See ``vlft.datasets.vqa_datasets``;
each builder names its reader (``vlft.datasets.vqa_sources``, which documents the
formats). Keys, under ``datasets.<name>.build_info`` (per-split overrides under
``annotations.<split>``):

- ``coco_vqa``: ``annotations.<split>.storage`` (LAVIS's ``vqa_*.json``, a path or a
  list; LAVIS's own lists, which also name ``answer_list.json`` and the official
  VQAv2 question / annotation files, are understood), ``images.storage`` (the COCO
  image root holding ``train2014/``, ``val2014/``, ``test2015/``),
  ``answer_list.storage`` (LAVIS's ``answer_list.json``; ``null`` for none). Types:
  ``default`` (train / val / test) and ``eval`` (LAVIS's ``eval_vqa.yaml``: val only,
  with LAVIS's storage list).
- ``ok_vqa``: the same layout (LAVIS's ``okvqa/annotations/`` files, COCO images).
- ``aok_vqa``: LAVIS's ``aokvqa_v1p0_{train,val,test}.json`` (val / test lists also name
  ``specialized_vocab_train_lavis.json``, the answer list), COCO images.
- ``gqa``: types ``default``, ``balanced_val``, ``balanced_testdev`` as LAVIS's
  ``DATASET_CONFIG_DICT`` (LAVIS's ``default`` val / test name A-OKVQA files, which
  this reader refuses with a hint), images under ``gqa/images/``.
- ``vg_vqa``: Visual Genome QA (``vg/annotations/vg_qa.json``), training only.
- ``vqa_custom``: ``.json/.jsonl/.csv/.tsv`` files, ``images.storage`` (optional:
  default the annotation file's folder), ``image_key``, ``question_key``,
  ``answer_key`` (a list, or a string split at ``answer_separator``),
  ``question_id_key`` (default: the running index), ``answer_list.storage``,
  ``format``, ``csv_delimiter``. ``answer_type`` / ``question_type`` columns are kept.

Nothing is downloaded; relative paths resolve under the cache root (``run.cache_root``).
"""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import TABLE_KEYS, BaseDatasetBuilder
from vlft.datasets.vqa_datasets import AOKVQAEvalDataset, VQADataset, VQAEvalDataset
from vlft.datasets.vqa_sources import read_aok_vqa, read_coco_vqa, read_gqa, read_ok_vqa, read_vg_vqa, read_vqa_custom


class _VQABuilder(BaseDatasetBuilder):
    train_dataset_cls = VQADataset
    eval_dataset_cls = VQAEvalDataset
    BUILD_INFO_KEYS = ("answer_list",)


@registry.register_builder("coco_vqa")
class COCOVQABuilder(_VQABuilder):
    """VQAv2 on COCO images in LAVIS's JSON format (files are read, never downloaded)."""

    reader = read_coco_vqa
    DATASET_CONFIG_DICT = {"default": "configs/datasets/coco_vqa/defaults.yaml",
                           "eval": "configs/datasets/coco_vqa/eval_vqa.yaml"}


@registry.register_builder("ok_vqa")
class OKVQABuilder(_VQABuilder):
    """OK-VQA (questions needing outside knowledge) on COCO images, in LAVIS's files."""

    reader = read_ok_vqa
    DATASET_CONFIG_DICT = {"default": "configs/datasets/ok_vqa/defaults.yaml"}


@registry.register_builder("aok_vqa")
class AOKVQABuilder(_VQABuilder):
    """A-OKVQA (direct answers and four choices per question) on COCO images, in LAVIS's files."""

    eval_dataset_cls = AOKVQAEvalDataset
    reader = read_aok_vqa
    DATASET_CONFIG_DICT = {"default": "configs/datasets/aok_vqa/defaults.yaml"}


@registry.register_builder("gqa")
class GQABuilder(_VQABuilder):
    """GQA (compositional questions on Visual Genome images), one answer per question."""

    reader = read_gqa
    DATASET_CONFIG_DICT = {"default": "configs/datasets/gqa/defaults.yaml",
                           "balanced_val": "configs/datasets/gqa/balanced_val.yaml",
                           "balanced_testdev": "configs/datasets/gqa/balanced_testdev.yaml"}


@registry.register_builder("vg_vqa")
class VGVQABuilder(BaseDatasetBuilder):
    """Visual Genome question answering, training only (LAVIS adds it to VQAv2 fine-tuning)."""

    train_dataset_cls = VQADataset
    reader = read_vg_vqa
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vg_vqa/defaults.yaml"}


@registry.register_builder("vqa_custom")
class CustomVQABuilder(_VQABuilder):
    """Your own image-question-answer data from JSON / JSONL / CSV files and an image folder."""

    reader = staticmethod(read_vqa_custom)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/vqa_custom/defaults.yaml"}
    BUILD_INFO_KEYS = TABLE_KEYS
