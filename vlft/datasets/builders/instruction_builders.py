"""Instruction-tuning builders (MiniGPT4-Qwen and LLaVA-style data); see
``vlft.datasets.instruction_datasets`` for the formats. Keys, under
``datasets.<name>.build_info`` (per-split overrides under ``annotations.<split>``):

- ``minigpt4_instruction``, ``llava_instruction`` (the reference's names and JSON):
  ``annotations.<split>.storage`` (a path or a list), ``images.storage`` (the image root).
- ``llava_conversation``: LLaVA's JSON (``conversations`` with ``<image>``), ``images.storage``,
  ``image_tag``.
- ``instruction_custom``: JSON / JSONL ``messages`` + ``images`` (or ShareGPT
  ``conversations``), ``images.storage`` (default: the annotation file's folder),
  ``messages_key``, ``images_key``, ``id_key``, ``image_tag``, ``format``.
- ``hf_instruction``: a Hugging Face ``datasets`` source: ``path``, ``name``, ``data_dir``,
  ``data_files``, ``revision``, ``cache_dir``, ``messages_column`` (default ``messages``),
  ``images_column`` (``images``: a list of images or paths, or one), ``id_column``,
  ``image_tag``, ``split_ratios`` + ``split_seed`` + ``source_split``,
  ``annotations.<split>.split``.
- ``shapes_chat``: the synthetic chat data (``vlft.datasets.synthetic_chat``).

Nothing is downloaded; relative paths resolve under the cache root (``run.cache_root``).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from vlft.common.registry import registry
from vlft.datasets.builders.base_dataset_builder import HF_SOURCE_KEYS, BaseDatasetBuilder
from vlft.datasets.caption_sources import image_root, option
from vlft.datasets.instruction_datasets import (MESSAGES_FORMAT, InstructionDataset, InstructionEvalDataset, _images_of,
                                                _turns, read_llava, read_messages, read_reference_json)
from vlft.datasets.synthetic_chat import ShapesChatDataset


class _InstructionBuilder(BaseDatasetBuilder):
    train_dataset_cls = InstructionDataset
    eval_dataset_cls = InstructionEvalDataset

    def build(self) -> Dict[str, Any]:
        """As the base builder, without the splits a project sets to ``null`` (an evaluation
        project drops the default YAML's ``train`` file this way)."""
        from omegaconf import OmegaConf

        annotations = (self.config.get("build_info") or {}).get("annotations") or {}
        dropped = [split for split, info in annotations.items() if info is None]
        if dropped:
            cfg = OmegaConf.to_container(self.config, resolve=True)
            for split in dropped:
                del cfg["build_info"]["annotations"][split]
            self.config = OmegaConf.create(cfg)
        return super().build()


@registry.register_builder("minigpt4_instruction")
class MiniGPT4InstructionBuilder(_InstructionBuilder):
    """MiniGPT-4's instruction data in the reference's JSON (``{image, instruction, output}``)."""

    reader = functools.partial(read_reference_json, source="minigpt4_instruction")
    DATASET_CONFIG_DICT = {"default": "configs/datasets/minigpt4_instruction/defaults.yaml"}


@registry.register_builder("llava_instruction")
class LLaVAInstructionBuilder(_InstructionBuilder):
    """LLaVA's instruction data converted to the reference's JSON (``{image, instruction, output}``)."""

    reader = functools.partial(read_reference_json, source="llava_instruction")
    DATASET_CONFIG_DICT = {"default": "configs/datasets/llava_instruction/defaults.yaml"}


@registry.register_builder("llava_conversation")
class LLaVAConversationBuilder(_InstructionBuilder):
    """LLaVA's own format (``conversations`` of ``human`` / ``gpt`` turns with ``<image>``)."""

    reader = staticmethod(read_llava)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/llava_conversation/defaults.yaml"}


@registry.register_builder("instruction_custom")
class CustomInstructionBuilder(_InstructionBuilder):
    """Your own conversations: JSON / JSONL ``messages`` + ``images`` (ms-swift, ShareGPT)."""

    reader = staticmethod(read_messages)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/instruction_custom/defaults.yaml"}


class HFConversations(Sequence):
    """Records of a Hugging Face split, built on access (the images are read per row)."""

    def __init__(self, table, rows: np.ndarray, conversations: List[List[Dict[str, str]]], ids: List[Any],
                 images_column: Optional[str]):
        self.table, self.rows, self.conversations, self.ids = table, rows, conversations, ids
        self.images_column = images_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        images = _images_of(self.table[int(self.rows[i])][self.images_column]) if self.images_column else []
        return {"image": images, "conversation": self.conversations[i], "sample_id": self.ids[i]}


def read_hf_instruction(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                        run_cfg: Mapping[str, Any]) -> Tuple[HFConversations, Optional[Path]]:
    """One split of a Hugging Face dataset of conversations (see the module docstring)."""
    import datasets

    from vlft.datasets.hf_source import _load_split, split_rows

    messages_col = option("messages_column", info, build_info, "messages")
    images_col = option("images_column", info, build_info, "images")
    id_col = option("id_column", info, build_info)
    tag = option("image_tag", info, build_info, "<image>")
    ratios = build_info.get("split_ratios")
    source_split = option("source_split", {}, build_info, "train") if ratios else option("split", info, {}, split)
    table, label = _load_split(build_info, source_split, run_cfg)
    if messages_col not in table.column_names:
        raise ValueError(f"hf_instruction: {label} has no column '{messages_col}'; its columns are "
                         f"{', '.join(table.column_names)} (set build_info.messages_column)")
    rows = split_rows(len(table), ratios, int(build_info.get("split_seed", 42)), split) if ratios else np.arange(len(table))
    images_col = images_col if images_col in table.column_names else None
    if images_col:  # undecoded: load_image decodes each one, so a corrupt image is a skipped item
        feature = table.features[images_col]
        if isinstance(feature, datasets.Image):
            table = table.cast_column(images_col, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):
            table = table.cast_column(images_col, datasets.Sequence(datasets.Image(decode=False)))
        elif isinstance(feature, list) and feature and isinstance(feature[0], datasets.Image):
            table = table.cast_column(images_col, [datasets.Image(decode=False)])
    texts = table.select_columns([messages_col] + ([id_col] if id_col else [])).select(rows).to_dict()
    convs = []
    for n, raw in enumerate(texts[messages_col]):
        where = f"hf_instruction: row {int(rows[n])} of {label}"
        sharegpt = bool(raw) and "from" in raw[0]
        convs.append(_turns(raw, "from" if sharegpt else "role", "value" if sharegpt else "content", tag, where,
                            MESSAGES_FORMAT))
    ids = texts[id_col] if id_col else [int(r) for r in rows]
    return HFConversations(table, rows, convs, ids, images_col), image_root("hf_instruction", build_info, run_cfg,
                                                                             required=False)


@registry.register_builder("hf_instruction")
class HFInstructionBuilder(_InstructionBuilder):
    """Conversations from a Hugging Face ``datasets`` source (hub id, local files, saved dataset)."""

    reader = staticmethod(read_hf_instruction)
    DATASET_CONFIG_DICT = {"default": "configs/datasets/hf_instruction/defaults.yaml"}
    BUILD_INFO_KEYS = HF_SOURCE_KEYS
    SPLIT_KEYS = ("split",)


@registry.register_builder("shapes_chat")
class ShapesChatBuilder(BaseDatasetBuilder):
    """Chat about the synthetic shapes scenes (the chat demo), generated on the fly."""

    train_dataset_cls = ShapesChatDataset
    eval_dataset_cls = ShapesChatDataset
    DATASET_CONFIG_DICT = {"default": "configs/datasets/shapes_chat/defaults.yaml"}
