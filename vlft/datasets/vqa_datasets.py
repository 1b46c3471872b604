"""Visual question answering datasets (LAVIS's VQAv2 JSON, your own files).

Records are LAVIS's VQAv2 annotations::

    {"question_id": 262148000, "question": "Where is he looking?",
     "answer": ["down", "down", "at table", ...],     # annotator answers, or one string;
                                                      # absent in test-dev
     "image": "val2014/COCO_val2014_000000262148.jpg",
     "answer_type": "other", "question_type": "where is the"}   # optional

- :class:`VQADataset` (train): one item per question, ``{"image", "text_input" (the
  processed question), "answers" (distinct answers, first-seen order), "weights"
  (LAVIS's soft targets: each annotator answer adds ``1 / len(answers)`` to the weight
  of its answer, so an item's weights sum to 1), "question_id", "instance_id"}``.
  Its ``collater`` flattens the variable-length answers over the batch: ``answers``
  (a flat list), ``weights`` (a flat float tensor) and ``n_answers`` (a LongTensor
  [B] saying how many belong to each question), as LAVIS's VQA models expect.
- :class:`VQAEvalDataset` (val/test): ``{"image", "text_input", "question_id",
  "instance_id"}``; ``ground_truth()`` gives the raw annotator answers per question
  (an empty list when the split has none, e.g. test-dev), ``answer_types()`` the
  ``answer_type`` of those that have one, and ``answer_list`` the candidate answers
  of rank-based inference (LAVIS's ``answer_list.json``) or ``None``.

An item whose image cannot be read is ``None``; the runner's ``SkippingCollate``
drops it before the collater runs (the collaters drop ``None`` too, when called
directly). Sources: :func:`read_coco_vqa` (LAVIS files) and :func:`read_vqa_custom`
(JSON / JSONL / CSV with configurable column names).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from vlft.common.utils import resolve_data_path
from vlft.datasets.caption_datasets import _CaptionBase
from vlft.datasets.caption_sources import (
    _read_json,
    _read_rows,
    _require,
    annotation_files,
    image_root,
    option,
)

LAVIS_VQA_FORMAT = (
    "LAVIS's VQAv2 JSON: a list of records "
    '{"question_id": 262148000, "question": "Where is he looking?", "answer": ["down", "down", ...], '
    '"image": "val2014/COCO_val2014_000000262148.jpg"} ("answer" may be one string, and is absent in '
    "test-dev); LAVIS's copies are vqa_train.json, vqa_val.json, vqa_val_eval.json, vqa_test.json and "
    "answer_list.json under https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/vqav2/ "
    "(vlft downloads nothing)"
)
CUSTOM_VQA_FORMAT = (
    "a JSON list of records, JSONL (one record per line) or CSV/TSV with a header, each record having an image "
    "path (build_info.image_key, default 'image') relative to build_info.images.storage (default: the "
    "annotation file's folder), a question (build_info.question_key, default 'question') and, for training, "
    "its answers (build_info.answer_key, default 'answer': a list, or a string split at "
    "build_info.answer_separator, default '|')"
)
ANSWER_LIST_FORMAT = (
    "LAVIS's answer_list.json: a JSON list of candidate answer strings, used by rank-based VQA inference; "
    "set build_info.answer_list: null when the model generates its answers"
)


class VQASource(NamedTuple):
    """What a VQA reader returns: records, the image root, and an answer list when the
    split's storage list named one (LAVIS lists answer_list.json among the val/test files)."""

    records: List[Dict[str, Any]]
    image_root: Optional[Path]
    answer_list: Optional[List[str]] = None


def answers_of(record: Mapping[str, Any]) -> List[str]:
    """A record's annotator answers as a list of strings (``[]`` when it has none)."""
    answer = record.get("answer")
    if answer is None:
        return []
    if isinstance(answer, str):
        return [answer]
    return [str(a) for a in answer]


def answer_weights(answers: Sequence[str]) -> Tuple[List[str], List[float]]:
    """LAVIS's soft VQA targets: the distinct answers (first-seen order) and, for each,
    the fraction of annotators who gave it."""
    counts = Counter(answers)
    return list(counts), [n / len(answers) for n in counts.values()]


def question_id_of(record: Mapping[str, Any], index: int) -> Hashable:
    """The record's ``question_id``, else its position in the split."""
    qid = record.get("question_id")
    return index if qid is None else qid


def _stack(values: List[Any]) -> Any:
    """Image tensors stacked into a batch; anything else (PIL images, no processor) as a list."""
    return torch.stack(values) if all(torch.is_tensor(v) for v in values) else values


class _VQABase(_CaptionBase):
    """Reads its split like the caption datasets; a VQA reader returns a :class:`VQASource`."""

    def __init__(self, vis_processor=None, text_processor=None, split: str = "train",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None):
        source = VQASource(*self.read_annotations(split, info or {}, build_info or {}, run_cfg or {}))
        self._listed_answer_list = source.answer_list
        self._setup(source.records, source.image_root, vis_processor, text_processor, split)

    @staticmethod
    def read_annotations(split, info, build_info, run_cfg) -> VQASource:
        raise NotImplementedError(
            "a VQA dataset needs a source: use a registered builder (coco_vqa, vqa_custom) or "
            "VQADataset.from_records(records, image_root)"
        )

    def __len__(self) -> int:
        return len(self.records)

    def _question(self, record: Mapping[str, Any]) -> str:
        question = record["question"]
        return self.text_processor(question) if self.text_processor is not None else question


class VQADataset(_VQABase):
    """Training split: one item per question, with its weighted answers."""

    def _index(self) -> None:
        for i, record in enumerate(self.records):
            if not answers_of(record):
                raise ValueError(
                    f"VQA split '{self.split}': record {i} (question_id {question_id_of(record, i)!r}) has no "
                    "answers; a training split needs 'answer' (a list of annotator answers or one string)"
                )

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        record = self.records[index]
        image = self._image(record)
        if image is None:
            return None
        answers, weights = answer_weights(answers_of(record))
        return {"image": image, "text_input": self._question(record), "answers": answers, "weights": weights,
                "question_id": question_id_of(record, index), "instance_id": str(index)}

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """A batch with the answers of all its questions in one flat list (see the module doc)."""
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        return {
            "image": _stack([s["image"] for s in samples]),
            "text_input": [s["text_input"] for s in samples],
            "answers": [a for s in samples for a in s["answers"]],
            "weights": torch.tensor([w for s in samples for w in s["weights"]], dtype=torch.float32),
            "n_answers": torch.tensor([len(s["answers"]) for s in samples], dtype=torch.long),
            "question_id": [s["question_id"] for s in samples],
            "instance_id": [s["instance_id"] for s in samples],
        }


class VQAEvalDataset(_VQABase):
    """Validation / test split: questions to answer, with the references for scoring."""

    source_name = "vqa"  # the builder's name, in error messages

    def __init__(self, vis_processor=None, text_processor=None, split: str = "val",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None):
        super().__init__(vis_processor, text_processor, split, info, build_info, run_cfg)
        configured = read_answer_list(type(self).source_name, info or {}, build_info or {}, run_cfg or {})
        self.answer_list: Optional[List[str]] = configured if configured is not None else self._listed_answer_list

    @classmethod
    def from_records(cls, records, image_root=None, vis_processor=None, text_processor=None, split: str = "val",
                     answer_list: Optional[List[str]] = None):
        """A dataset over records already in memory, with an optional candidate answer list."""
        self = super().from_records(records, image_root, vis_processor, text_processor, split)
        self.answer_list = list(answer_list) if answer_list is not None else None
        return self

    def _index(self) -> None:
        self.question_ids: List[Hashable] = []
        seen: Dict[Hashable, int] = {}
        for i, record in enumerate(self.records):
            qid = question_id_of(record, i)
            if qid in seen:
                raise ValueError(f"VQA split '{self.split}': question_id {qid!r} is used by records {seen[qid]} and "
                                 f"{i}; ids must be unique to score answers per question")
            seen[qid] = i
            self.question_ids.append(qid)

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        record = self.records[index]
        image = self._image(record)
        if image is None:
            return None
        return {"image": image, "text_input": self._question(record), "question_id": self.question_ids[index],
                "instance_id": str(index)}

    def collater(self, samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """Images stacked; questions, ids as lists (ids stay JSON-serialisable for predictions)."""
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        return {"image": _stack([s["image"] for s in samples]),
                **{key: [s[key] for s in samples] for key in ("text_input", "question_id", "instance_id")}}

    def ground_truth(self) -> Dict[Hashable, List[str]]:
        """``question_id -> [raw annotator answers]`` (``[]`` where the split has none)."""
        return {qid: answers_of(r) for qid, r in zip(self.question_ids, self.records)}

    def answer_types(self) -> Dict[Hashable, str]:
        """``question_id -> answer_type`` ("yes/no", "number", "other") for questions that have one."""
        return {qid: r["answer_type"] for qid, r in zip(self.question_ids, self.records) if r.get("answer_type")}


# --------------------------------------------------------------------------- sources
def read_answer_list(source: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                     run_cfg: Mapping[str, Any]) -> Optional[List[str]]:
    """``build_info.answer_list.storage`` (or ``answer_list`` as a plain path), read; ``None`` when unset."""
    setting = option("answer_list", info, build_info)
    raw = setting.get("storage") if isinstance(setting, Mapping) else setting
    if not raw:
        return None
    path = resolve_data_path(str(raw), run_cfg)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: answer list build_info.answer_list.storage='{raw}' not found "
                                f"(looked at {path}). Expected {ANSWER_LIST_FORMAT}")
    data = _read_json(path, source, ANSWER_LIST_FORMAT)
    if not _is_answer_list(data):
        raise ValueError(f"{source}: {path} holds a {type(data).__name__}, not a non-empty list of strings; "
                         f"expected {ANSWER_LIST_FORMAT}")
    return data


def _is_answer_list(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(a, str) for a in data)


def read_coco_vqa(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                  run_cfg: Mapping[str, Any]) -> VQASource:
    """Records of LAVIS's VQAv2 JSON files.

    A LAVIS storage list may also name, besides the question files, ``answer_list.json``
    (taken as the answer list) and the official ``v2_mscoco_*_annotations.json`` (its
    answer types, and its answers for records without any, are merged in) and
    ``v2_OpenEnded_*_questions.json`` (nothing in it is new: skipped)."""
    files = annotation_files("coco_vqa", split, info, run_cfg, LAVIS_VQA_FORMAT)
    root = image_root("coco_vqa", build_info, run_cfg, required=True)
    records: List[Dict[str, Any]] = []
    answer_list, official = None, {}
    for path in files:
        data = _read_json(path, "coco_vqa", LAVIS_VQA_FORMAT)
        if _is_answer_list(data):
            answer_list = data
            continue
        if isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
            official.update({a["question_id"]: a for a in data["annotations"]
                             if isinstance(a, Mapping) and "question_id" in a})
            continue
        if isinstance(data, Mapping) and isinstance(data.get("questions"), list):
            continue
        if not isinstance(data, list):
            raise ValueError(f"coco_vqa: {path} holds a {type(data).__name__}, not a list; expected {LAVIS_VQA_FORMAT}")
        for i, ann in enumerate(data):
            _require(ann, ("image", "question"), path, i, "coco_vqa", LAVIS_VQA_FORMAT)
            record = dict(ann)
            record["question_id"] = question_id_of(ann, len(records))
            records.append(record)
    for record in records:
        extra = official.get(record["question_id"])
        if extra:
            if extra.get("answer_type") and not record.get("answer_type"):
                record["answer_type"] = extra["answer_type"]
            if record.get("answer") is None and extra.get("answers"):
                record["answer"] = [a["answer"] for a in extra["answers"]]
    return VQASource(records, root, answer_list)


def read_vqa_custom(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any],
                    run_cfg: Mapping[str, Any]) -> VQASource:
    """Records of local JSON / JSONL / CSV files with configurable column names."""
    image_key = option("image_key", info, build_info, "image")
    question_key = option("question_key", info, build_info, "question")
    answer_key = option("answer_key", info, build_info, "answer")
    id_key = option("question_id_key", info, build_info)
    separator = option("answer_separator", info, build_info, "|")
    files = annotation_files("vqa_custom", split, info, run_cfg, CUSTOM_VQA_FORMAT)
    root = image_root("vqa_custom", build_info, run_cfg, required=False)
    records: List[Dict[str, Any]] = []
    for path in files:
        rows = _read_rows(path, option("format", info, build_info), option("csv_delimiter", info, build_info), "vqa_custom")
        for i, row in enumerate(rows):
            keys = (image_key, question_key) + ((id_key,) if id_key else ())
            _require(row, keys, path, i, "vqa_custom",
                     "column names set by build_info.image_key / question_key / question_id_key")
            image = str(row[image_key])
            # without an image root, images sit next to their annotation file
            source_image = image if root is not None or Path(image).is_absolute() else str(path.parent / image)
            record = {"image": source_image, "question": str(row[question_key]),
                      "answer": _answer_cell(row.get(answer_key), separator),
                      "question_id": row[id_key] if id_key else len(records)}
            for key in ("answer_type", "question_type"):
                if row.get(key):
                    record[key] = row[key]
            records.append(record)
    return VQASource(records, root)


def _answer_cell(value: Any, separator: Optional[str]) -> List[str]:
    """Answers from a cell: a list; a JSON list string ('["a", "b"]'); or a string split at ``separator``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(a) for a in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(a) for a in parsed]
    if not text:
        return []
    parts = text.split(separator) if separator else [text]
    return [p.strip() for p in parts if p.strip()]
