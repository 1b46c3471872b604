"""Multimodal classification builders: ``nlvr`` (NLVR2, two images and a sentence, true
or false), LAVIS's files. Keys, under ``datasets.nlvr.build_info``:
``annotations.<split>.storage`` (LAVIS's ``nlvr_{train,dev}.json``, saved as
``nlvr/annotations/{train,dev,test}.json``) and ``images.storage`` (the folder the
records' image paths are relative to; LAVIS's default is its site path
``/export/share/datasets/vision/NLVR2/``, here ``nlvr/images/`` under the cache root).
Train items are randomly flipped left / right as LAVIS's (see ``vlft.datasets.nlvr_datasets``).
"""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from vlft.datasets.nlvr_datasets import NLVRDataset, NLVREvalDataset, read_nlvr


@registry.register_builder("nlvr")
class NLVRBuilder(BaseDatasetBuilder):
    """NLVR2 visual reasoning over image pairs (files are read, never downloaded)."""

    train_dataset_cls = NLVRDataset
    eval_dataset_cls = NLVREvalDataset
    reader = staticmethod(read_nlvr)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/nlvr/defaults.yaml"}
