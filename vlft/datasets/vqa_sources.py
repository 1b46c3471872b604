"""Annotation readers of the VQA builders: LAVIS's JSON files and your own files.

Every reader has the signature ``(split, info, build_info, run_cfg) -> VQASource``
(records, image root, answer list) and turns its files into the records
``vlft.datasets.vqa_datasets`` serves::

    {"question_id": hashable, "question": str, "image": path relative to the image root,
     "answer": [annotator answers] | "one answer" | absent (a test split), ...}

LAVIS's formats, one reader with per-builder settings (:func:`lavis_vqa_reader`):

- ``coco_vqa`` (VQAv2) and ``ok_vqa``: ``{"question_id", "question", "answer": [...],
  "image": "val2014/COCO_val2014_000000262148.jpg"}``; a storage list may also name
  ``answer_list.json`` and the official question / annotation files (see
  :func:`read_lavis_vqa`).
- ``aok_vqa`` (A-OKVQA): ``{"question_id": "22MexNkBPpdZGX6sxbxVBH", "question",
  "choices": [4 answers], "correct_choice_idx": 2, "direct_answers": [10 answers],
  "rationales": [...], "image": "val2014/COCO_val2014_000000....jpg"}`` (test records
  have no ``correct_choice_idx`` / ``direct_answers``); the direct answers are the
  record's ``answer``.
- ``gqa``: ``{"question_id", "question", "answer": "one answer", "image": "n161313.jpg"}``.
- ``vg_vqa`` (Visual Genome QA, training only): ``{"question", "answer": "one answer",
  "image": "VG_100K/1.jpg"}``.

A record lacking a key its split needs is a ``ValueError`` naming the file and the
record. Answer lists (rank-based inference) come from ``build_info.answer_list``, else
from a plain list of strings among the split's storage files (LAVIS's layout); the
training split never reads one.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from vlft.common.utils import resolve_data_path
from vlft.datasets.caption_sources import _read_json, _read_rows, _require, annotation_files, image_root, option

_LAVIS_URL = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/"
LAVIS_VQA_FORMAT = (
    "LAVIS's VQAv2 JSON: a list of records "
    '{"question_id": 262148000, "question": "Where is he looking?", "answer": ["down", "down", ...], '
    '"image": "val2014/COCO_val2014_000000262148.jpg"} ("answer" may be one string, and is absent in '
    "test-dev); LAVIS's copies are vqa_train.json, vqa_val.json, vqa_val_eval.json, vqa_test.json and "
    f"answer_list.json under {_LAVIS_URL}vqav2/ (vlft downloads nothing)"
)
OKVQA_FORMAT = (
    "LAVIS's OK-VQA JSON (VQAv2's layout): a list of records "
    '{"question_id": 2971475, "question": "What sport can you use this for?", "answer": ["race", "race", ...], '
    '"image": "val2014/COCO_val2014_000000297147.jpg"}; LAVIS\'s copies are okvqa_train.json, '
    f"okvqa_val_eval.json and okvqa_answer_list_train.json under {_LAVIS_URL}okvqa/, saved as "
    "okvqa/annotations/okvqa_train.json, vqa_val_eval.json and answer_list.json (vlft downloads nothing)"
)
AOKVQA_FORMAT = (
    "LAVIS's A-OKVQA JSON: a list of records "
    '{"question_id": "22MexNkBPpdZGX6sxbxVBH", "question": "What is the man by the bags awaiting?", '
    '"choices": ["skateboarder", "train", "delivery", "cab"], "correct_choice_idx": 3, '
    '"direct_answers": ["ride", "ride", "bus", ...], "rationales": ["..."], '
    '"image": "val2014/COCO_val2014_000000461751.jpg"} (test records have no correct_choice_idx / '
    f"direct_answers); LAVIS's copies are aokvqa_v1p0_{{train,val,test}}.json under {_LAVIS_URL}aokvqa/"
)
GQA_FORMAT = (
    "LAVIS's GQA JSON: a list of records "
    '{"question_id": "201307251", "question": "Is the sky dark?", "answer": "yes", "image": "n161313.jpg"} '
    "(no answer in the test split); LAVIS's copies are train_balanced_questions.json, "
    f"val_balanced_questions.json, testdev_balanced_questions.json, test_balanced_questions.json under {_LAVIS_URL}gqa/"
)
VG_VQA_FORMAT = (
    "LAVIS's Visual Genome QA JSON: a list of records "
    '{"question": "What color is the sky?", "answer": "blue", "image": "VG_100K/1.jpg"} '
    f"(LAVIS's copy: {_LAVIS_URL}visual_genome/vg_qa.json)"
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
    """What a VQA reader returns: records, the image root, and the split's answer list."""

    records: List[Dict[str, Any]]
    image_root: Optional[Path]
    answer_list: Optional[List[str]] = None


def question_id_of(record: Mapping[str, Any], index: int) -> Hashable:
    """The record's ``question_id``, else its position in the split."""
    qid = record.get("question_id")
    return index if qid is None else qid


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


def read_lavis_vqa(split: str, info: Mapping[str, Any], build_info: Mapping[str, Any], run_cfg: Mapping[str, Any],
                   source: str = "coco_vqa", expected: str = LAVIS_VQA_FORMAT, answer_key: str = "answer",
                   train_keys: Sequence[str] = (), eval_keys: Sequence[str] = (),
                   foreign: Optional[Tuple[str, str]] = None) -> VQASource:
    """Records of LAVIS-format VQA files (the settings of each builder: :func:`lavis_vqa_reader`).

    Every record needs ``image`` and ``question``, training records also ``train_keys``,
    the others ``eval_keys``; ``answer_key`` names the answers (copied to ``answer``).
    ``foreign = (key, hint)``: a record with ``key`` but no ``answer_key`` is from another
    dataset; the error says ``hint``. A storage list may also name, besides the question
    files, an answer list (a plain list of strings), the official
    ``v2_mscoco_*_annotations.json`` / ``mscoco_val2014_annotations.json`` (its answer
    types, and its answers for records without any, are merged in) and the official
    ``*_questions.json`` (nothing in it is new: skipped)."""
    files = annotation_files(source, split, info, run_cfg, expected)
    root = image_root(source, build_info, run_cfg, required=True)
    required = ("image", "question") + tuple(train_keys if split == "train" else eval_keys)
    records: List[Dict[str, Any]] = []
    listed, official = None, {}
    for path in files:
        data = _read_json(path, source, expected)
        if _is_answer_list(data):
            listed = data
            continue
        if isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
            official.update({a["question_id"]: a for a in data["annotations"]
                             if isinstance(a, Mapping) and "question_id" in a})
            continue
        if isinstance(data, Mapping) and isinstance(data.get("questions"), list):
            continue
        if not isinstance(data, list):
            raise ValueError(f"{source}: {path} holds a {type(data).__name__}, not a list; expected {expected}")
        for i, ann in enumerate(data):
            if foreign and isinstance(ann, Mapping) and foreign[0] in ann and answer_key not in ann:
                raise ValueError(f"{source}: record {i} of {path} has '{foreign[0]}' and no '{answer_key}': "
                                 f"{foreign[1]}")
            _require(ann, required, path, i, source, expected)
            record = dict(ann)
            if answer_key != "answer":
                record["answer"] = ann.get(answer_key)
            record["question_id"] = question_id_of(ann, len(records))
            records.append(record)
    for record in records:
        extra = official.get(record["question_id"])
        if extra:
            if extra.get("answer_type") and not record.get("answer_type"):
                record["answer_type"] = extra["answer_type"]
            if record.get("answer") is None and extra.get("answers"):
                record["answer"] = [a["answer"] for a in extra["answers"]]
    answer_list = None
    if split != "train":  # training never ranks answers
        configured = read_answer_list(source, info, build_info, run_cfg)
        answer_list = configured if configured is not None else listed
    return VQASource(records, root, answer_list)


def lavis_vqa_reader(source: str, **settings: Any) -> Callable[..., VQASource]:
    """:func:`read_lavis_vqa` with one builder's settings, as the builder's ``reader``."""
    return functools.partial(read_lavis_vqa, source=source, **settings)


_GQA_DEFAULT_HINT = (
    "this is an A-OKVQA file. LAVIS's gqa 'default' type points its val / test splits at A-OKVQA's files "
    "(aokvqa_v1p0_val.json, ...); set datasets.gqa.type: balanced_val or balanced_testdev (GQA's own "
    "questions), as LAVIS's BLIP-2 GQA projects do, or point build_info.annotations at GQA files"
)
read_coco_vqa = lavis_vqa_reader("coco_vqa")
read_ok_vqa = lavis_vqa_reader("ok_vqa", expected=OKVQA_FORMAT)
read_aok_vqa = lavis_vqa_reader("aok_vqa", expected=AOKVQA_FORMAT, answer_key="direct_answers",
                                train_keys=("direct_answers",), eval_keys=("choices",))
read_gqa = lavis_vqa_reader("gqa", expected=GQA_FORMAT, train_keys=("answer",),
                            foreign=("direct_answers", _GQA_DEFAULT_HINT))
read_vg_vqa = lavis_vqa_reader("vg_vqa", expected=VG_VQA_FORMAT, train_keys=("answer",))


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
    answer_list = read_answer_list("vqa_custom", info, build_info, run_cfg) if split != "train" else None
    return VQASource(records, root, answer_list)


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
