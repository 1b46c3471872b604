"""Instruction-tuning data: conversations with images, from the reference's and LLaVA's
files and from your own.

Every source becomes records ``{"image": [source, ...], "conversation": [{"role",
"content"}, ...], "sample_id"}``, where ``<ImageHere>`` marks each image in order
(``vlft.processors.chat``). Readers (``(split, info, build_info, run_cfg) -> (records,
image_root)``, one per builder, see ``vlft.datasets.builders.instruction_builders``):

- :func:`read_reference_json` (``minigpt4_instruction``, ``llava_instruction``): the
  reference's JSON list of ``{"image": "x.jpg", "instruction": str | [str, ...],
  "output": str | [str, ...]}``; equal-length lists are the turns of a multi-turn
  conversation, the first instruction holds ``<Img><ImageHere></Img>``.
- :func:`read_llava` (``llava_conversation``): LLaVA's ``[{"id", "image",
  "conversations": [{"from": "human" | "gpt" | "system", "value"}]}]`` with ``<image>``.
- :func:`read_messages` (``instruction_custom``): JSON or JSONL records with
  ``messages`` (``{"role", "content"}``; content may be a string or a list of
  ``{"type": "text", "text"}`` / ``{"type": "image"}`` parts) or ShareGPT's
  ``conversations`` (``from`` / ``value``), and ``images`` (a list of paths; or ``image``),
  ``<image>`` marking each image (ms-swift's and LLaMA-Factory's formats); key names
  are configurable (``messages_key``, ``images_key``, ``image_tag``).

A placeholder count that differs from the record's images is an error naming the file
and the record. Items: ``{"image": [processed images], "conversation", "sample_id",
"instance_id"}`` (evaluation splits add ``answer``, the last assistant turn, and
``ground_truth()``); an item with an unreadable image is ``None`` (skipped and
counted by the runner). :func:`collate_conversations` stacks every image of the batch
into one tensor (``None`` when there is none) with ``n_images`` per sample.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch

from vlft.datasets.caption_datasets import _CaptionBase
from vlft.datasets.caption_sources import annotation_files, image_root, option
from vlft.datasets.image_io import load_image
from vlft.processors.chat import IMAGE_MARK, count_marks
from vlft.processors.instruction import BaseInstructionProcessor

logger = logging.getLogger(__name__)

REFERENCE_FORMAT = ('the reference\'s JSON list of {"image": "x.jpg", "instruction": "<Img><ImageHere></Img> ...", '
                    '"output": "..."} (instruction and output strings, or equal-length lists for several turns)')
LLAVA_FORMAT = ('LLaVA\'s JSON list of {"id": ..., "image": "x.jpg", "conversations": [{"from": "human", '
                '"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}')
MESSAGES_FORMAT = ('JSON list or JSONL of {"messages": [{"role": "user", "content": "<image>..."}, {"role": '
                   '"assistant", "content": "..."}], "images": ["x.jpg"]} (or ShareGPT\'s "conversations" with '
                   '"from" / "value")')
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "bot": "assistant", "model": "assistant"}


def _images_of(value: Any) -> List[Any]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_record(record: Dict[str, Any], where: str, fmt: str) -> Dict[str, Any]:
    marks, n = count_marks(record["conversation"]), len(record["image"])
    if marks != n:
        raise ValueError(f"{where}: {marks} image placeholder(s) but {n} image(s); expected {fmt}")
    if not any(m["role"] == "assistant" for m in record["conversation"]):
        raise ValueError(f"{where}: the conversation has no assistant turn; expected {fmt}")
    return record


def _json_list(path: Path, source: str, fmt: str, kind: Optional[str] = None) -> List[Any]:
    """The records of a JSON list (or ``{"annotations": [...]}``) or a JSONL file."""
    kind = (kind or path.suffix.lstrip(".")).lower()
    text = path.read_text(encoding="utf-8")
    try:
        if kind == "jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: {path} is not valid {kind.upper()} ({err}); expected {fmt}") from None
    if isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise ValueError(f"{source}: {path} holds a {type(data).__name__}, not a list of records; expected {fmt}")
    return data


def reference_conversation(instruction: Any, output: Any, where: str) -> List[Dict[str, str]]:
    """The reference's ``instruction`` / ``output`` (strings or equal-length lists) as turns."""
    ins = [instruction] if isinstance(instruction, str) else list(instruction or [])
    outs = [output] if isinstance(output, str) else list(output or [])
    if not ins or len(ins) != len(outs) or not all(isinstance(t, str) for t in ins + outs):
        raise ValueError(f"{where}: 'instruction' and 'output' must be strings or lists of strings of the same "
                         f"length, got {len(ins)} instruction(s) and {len(outs)} output(s); expected {REFERENCE_FORMAT}")
    return [m for q, a in zip(ins, outs) for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def read_reference_json(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any], run_cfg: Mapping[str, Any],
                        source: str = "minigpt4_instruction") -> Tuple[List[Dict[str, Any]], Optional[Path]]:
    files = annotation_files(source, split, info, run_cfg, REFERENCE_FORMAT)
    root = image_root(source, build_info, run_cfg, required=False)
    records = []
    for path in files:
        for i, row in enumerate(_json_list(path, source, REFERENCE_FORMAT)):
            where = f"{source}: record {i} of {path}"
            if not isinstance(row, Mapping) or "instruction" not in row or "output" not in row:
                raise ValueError(f"{where} needs 'instruction' and 'output'; expected {REFERENCE_FORMAT}")
            records.append(_check_record({"image": _images_of(row.get("image")), "sample_id": row.get("id", f"{path.stem}_{i}"),
                                          "conversation": reference_conversation(row["instruction"], row["output"], where)},
                                         where, REFERENCE_FORMAT))
    return records, root


def _turns(rows: Sequence[Any], role_key: str, content_key: str, tag: str, where: str, fmt: str) -> List[Dict[str, str]]:
    turns = []
    for k, turn in enumerate(rows or []):
        if not isinstance(turn, Mapping) or turn.get(role_key) not in _ROLES:
            raise ValueError(f"{where}: turn {k} must have '{role_key}' in {sorted(_ROLES)}, got {turn!r}; expected {fmt}")
        content = turn.get(content_key)
        if isinstance(content, list):  # OpenAI-style parts: text and image entries
            content = "".join(IMAGE_MARK if p.get("type") == "image" else str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ValueError(f"{where}: turn {k} has no '{content_key}' text; expected {fmt}")
        turns.append({"role": _ROLES[turn[role_key]], "content": content.replace(tag, IMAGE_MARK) if tag else content})
    return turns


def read_llava(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any], run_cfg: Mapping[str, Any],
               source: str = "llava_conversation") -> Tuple[List[Dict[str, Any]], Optional[Path]]:
    files = annotation_files(source, split, info, run_cfg, LLAVA_FORMAT)
    root = image_root(source, build_info, run_cfg, required=False)
    tag = option("image_tag", info, build_info, "<image>")
    records = []
    for path in files:
        for i, row in enumerate(_json_list(path, source, LLAVA_FORMAT)):
            where = f"{source}: record {i} of {path}"
            if not isinstance(row, Mapping) or not isinstance(row.get("conversations"), list):
                raise ValueError(f"{where} has no 'conversations' list; expected {LLAVA_FORMAT}")
            conv = _turns(row["conversations"], "from", "value", tag, where, LLAVA_FORMAT)
            records.append(_check_record({"image": _images_of(row.get("image")), "conversation": conv,
                                          "sample_id": row.get("id", f"{path.stem}_{i}")}, where, LLAVA_FORMAT))
    return records, root


def read_messages(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any], run_cfg: Mapping[str, Any],
                  source: str = "instruction_custom") -> Tuple[List[Dict[str, Any]], Optional[Path]]:
    files = annotation_files(source, split, info, run_cfg, MESSAGES_FORMAT)
    root = image_root(source, build_info, run_cfg, required=False)
    tag = option("image_tag", info, build_info, "<image>")
    messages_key = option("messages_key", info, build_info)
    images_key = option("images_key", info, build_info, "images")
    id_key = option("id_key", info, build_info, "id")
    records = []
    for path in files:
        for i, row in enumerate(_json_list(path, source, MESSAGES_FORMAT, option("format", info, build_info))):
            where = f"{source}: record {i} of {path}"
            key = messages_key or ("messages" if "messages" in row else "conversations")
            if not isinstance(row, Mapping) or not isinstance(row.get(key), list):
                raise ValueError(f"{where} has no '{key}' list; expected {MESSAGES_FORMAT}")
            sharegpt = bool(row[key]) and isinstance(row[key][0], Mapping) and "from" in row[key][0]
            conv = _turns(row[key], "from" if sharegpt else "role", "value" if sharegpt else "content", tag, where,
                          MESSAGES_FORMAT)
            images = _images_of(row.get(images_key, row.get("image")))
            # without an image root, images sit next to their annotation file
            images = [im if root is not None or not isinstance(im, str) or Path(im).is_absolute() else str(path.parent / im)
                      for im in images]
            records.append(_check_record({"image": images, "conversation": conv,
                                          "sample_id": row.get(id_key, f"{path.stem}_{i}")}, where, MESSAGES_FORMAT))
    return records, root


class InstructionDataset(_CaptionBase):
    """Training split: one item per conversation."""

    def _index(self) -> None:
        if self.text_processor is not None and not isinstance(self.text_processor, BaseInstructionProcessor):
            logger.warning("%s: text_processor is not applied to conversations (the chat template formats them)",
                           type(self).__name__)

    def __len__(self) -> int:
        return len(self.records)

    def _images(self, record: Mapping[str, Any]) -> Optional[List[Any]]:
        out = []
        for source in record["image"]:
            if isinstance(source, (str, Path)) and self.image_root is not None:
                source = self.image_root / source
            image = load_image(source)
            if image is None:
                return None
            out.append(self.vis_processor(image) if self.vis_processor is not None else image)
        return out

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        record = self.records[index]
        images = self._images(record)
        if images is None:
            return None
        return {"image": images, "conversation": record["conversation"], "sample_id": record["sample_id"],
                "instance_id": str(index)}

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        return collate_conversations(samples)


class InstructionEvalDataset(InstructionDataset):
    """Validation / test split: the loss on each conversation and, where its last turn is an
    assistant answer, that answer as the reference for generation (``ground_truth()``)."""

    def _index(self) -> None:
        super()._index()
        seen: Dict[Hashable, int] = {}
        for i, record in enumerate(self.records):
            sid = record["sample_id"]
            if sid in seen:
                raise ValueError(f"instruction split '{self.split}': sample id {sid!r} is used by records {seen[sid]} "
                                 f"and {i}; ids must be unique to score answers")
            seen[sid] = i

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        item = super().__getitem__(index)
        if item is not None:
            last = item["conversation"][-1]
            item["answer"] = last["content"] if last["role"] == "assistant" else None
        return item

    def ground_truth(self) -> Dict[Hashable, List[str]]:
        """``sample_id -> [the last assistant turn]`` for the conversations that end with one."""
        return {r["sample_id"]: [r["conversation"][-1]["content"]] for r in self.records
                if r["conversation"] and r["conversation"][-1]["role"] == "assistant"}


def collate_conversations(samples: List[Optional[Mapping[str, Any]]]) -> Dict[str, Any]:
    """Every image of the batch stacked (``None`` when none), ``n_images`` per sample, the rest as lists."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return {}
    images = [im for s in samples for im in s["image"]]
    out: Dict[str, Any] = {
        "image": torch.stack(images) if images and all(torch.is_tensor(i) for i in images) else (images or None),
        "n_images": torch.tensor([len(s["image"]) for s in samples], dtype=torch.long),
    }
    for key in samples[0]:
        if key != "image" and all(key in s for s in samples):
            out[key] = [s[key] for s in samples]
    return out
