"""Visual question answering datasets, shared by every VQA builder (``coco_vqa``,
``ok_vqa``, ``aok_vqa``, ``gqa``, ``vg_vqa``, ``vqa_custom``); each builder's reader
(``vlft.datasets.vqa_sources``) turns its files into records like LAVIS's VQAv2 ones::

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
- :class:`AOKVQAEvalDataset` (A-OKVQA val/test): also ``choices``,
  ``correct_choice_idx`` and ``direct_answers`` per item, and ``correct_choices()``.

An item whose image cannot be read is ``None``; the runner's ``SkippingCollate``
drops it before the collater runs (the collaters drop ``None`` too, when called
directly). GQA and Visual Genome give one answer per question: its weight is 1, as in
LAVIS.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import torch

from vlft.datasets.caption_datasets import _CaptionBase
from vlft.datasets.vqa_sources import (  # noqa: F401  (the readers, re-exported)
    VQASource,
    question_id_of,
    read_coco_vqa,
    read_vqa_custom,
)


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


def _stack(values: List[Any]) -> Any:
    """Image tensors stacked into a batch; anything else (PIL images, no processor) as a list."""
    return torch.stack(values) if all(torch.is_tensor(v) for v in values) else values


class _VQABase(_CaptionBase):
    """Reads its split like the caption datasets; a VQA reader returns a :class:`VQASource`."""

    def __init__(self, vis_processor=None, text_processor=None, split: str = "train",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None, reader: Optional[Callable[..., Any]] = None):
        read = reader or self.read_annotations
        source = VQASource(*read(split, info or {}, build_info or {}, run_cfg or {}))
        self.answer_list: Optional[List[str]] = source.answer_list
        self._setup(source.records, source.image_root, vis_processor, text_processor, split)

    @staticmethod
    def read_annotations(split, info, build_info, run_cfg) -> VQASource:
        raise NotImplementedError(
            "a VQA dataset needs a source: use a registered builder (coco_vqa, ok_vqa, aok_vqa, gqa, vg_vqa, "
            "vqa_custom) or "
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

    #: item keys the collater passes on as lists (subclasses add theirs)
    list_keys: Tuple[str, ...] = ("text_input", "question_id", "instance_id")

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
                **{key: [s[key] for s in samples] for key in self.list_keys}}

    def ground_truth(self) -> Dict[Hashable, List[str]]:
        """``question_id -> [raw annotator answers]`` (``[]`` where the split has none)."""
        return {qid: answers_of(r) for qid, r in zip(self.question_ids, self.records)}

    def answer_types(self) -> Dict[Hashable, str]:
        """``question_id -> answer_type`` ("yes/no", "number", "other") for questions that have one."""
        return {qid: r["answer_type"] for qid, r in zip(self.question_ids, self.records) if r.get("answer_type")}


class AOKVQAEvalDataset(VQAEvalDataset):
    """A-OKVQA validation / test: items also carry ``choices``, ``correct_choice_idx`` and
    ``direct_answers`` (``None`` where the split has none), batched as lists, as in LAVIS;
    ``ground_truth()`` gives the direct answers, ``correct_choices()`` the right choice."""

    list_keys = VQAEvalDataset.list_keys + ("choices", "correct_choice_idx", "direct_answers")

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        item = super().__getitem__(index)
        if item is not None:
            record = self.records[index]
            item.update(choices=list(record["choices"]), correct_choice_idx=record.get("correct_choice_idx"),
                        direct_answers=record.get("direct_answers"))
        return item

    def correct_choices(self) -> Dict[Hashable, str]:
        """``question_id -> the correct choice`` for the questions that have one (not in test)."""
        out = {}
        for qid, record in zip(self.question_ids, self.records):
            idx = record.get("correct_choice_idx")
            if idx is not None:
                choices = record["choices"]
                if not isinstance(idx, int) or not 0 <= idx < len(choices):
                    raise ValueError(f"A-OKVQA question {qid!r}: correct_choice_idx {idx!r} is not an index "
                                     f"into its {len(choices)} choices")
                out[qid] = choices[idx]
        return out
