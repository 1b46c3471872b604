"""Synthetic stand-ins for LAVIS's other VQA files (called by ``synthetic_lavis``).

From the scenes and VQAv2-style records ``write_shapes_lavis`` made, under the root::

    coco/annotations/vqa_val_eval.json, v2_OpenEnded_mscoco_val2014_questions.json,
        v2_mscoco_val2014_annotations.json                        coco_vqa, type eval (val)
    okvqa/annotations/okvqa_train.json (train scenes), vqa_val_eval.json (val scenes),
        answer_list.json, OpenEnded_mscoco_val2014_questions.json,
        mscoco_val2014_annotations.json                           ok_vqa (images: coco/images/)
    aokvqa/annotations/aokvqa_v1p0_{train,val,test}.json,
        specialized_vocab_train_lavis.json, large_vocab_train_lavis.json   aok_vqa (coco/images/)
    gqa/images/nSCENE.png
    gqa/annotations/train_balanced_questions.json, val_balanced_questions.json,
        testdev_balanced_questions.json (test scenes, with answers),
        test_balanced_questions.json (test scenes, no answers),
        train_all_questions_0.json, val_all_questions.json        gqa (every type)
    vg/images/VG_100K/SCENE.png, vg/annotations/vg_qa.json        vg_vqa (train scenes)

The VQAv2-style files reuse the COCO VQA questions (the official question / annotation
files hold the same questions, ten answers each). A-OKVQA asks two of the scene's
questions (the left shape's colour, the right shape's shape) with four choices each
(the true answer, two others of its kind, one "no"), ten direct answers (those of the
VQA record) and one rationale; question ids are strings ("aok_SCENE_K"), as
A-OKVQA's; the test split has no correct_choice_idx / direct_answers / rationales.
GQA and VG records have one answer each (the scene's true answer); GQA's ids are
strings, VG's ints. Deterministic: the same inputs write the same bytes.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence

from vlft.datasets.synthetic_lavis import _write_image, _write_json
from vlft.datasets.synthetic_shapes import COLOURS, SHAPES, scene_questions

Scenes = Dict[str, List[Dict[str, Any]]]


def _official(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """VQAv2's official question and annotation files for these records."""
    questions = [{"question_id": r["question_id"], "question": r["question"], "image_id": _image_id(r)}
                 for r in records]
    annotations = [{"question_id": r["question_id"], "image_id": _image_id(r), "answer_type": r["answer_type"],
                    "question_type": r["question_type"], "multiple_choice_answer": Counter(r["answer"]).most_common(1)[0][0],
                    "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(r["answer"])]}
                   for r in records]
    return {"questions": {"questions": questions}, "annotations": {"annotations": annotations}}


def _image_id(record: Dict[str, Any]) -> int:
    return int(record["question_id"]) // 10


def _choices(answer: str, kind: str, rng: random.Random) -> List[str]:
    pool = list(COLOURS) if kind == "colour" else list(SHAPES)
    others = [a for a in pool if a != answer]
    choices = [answer] + rng.sample(others, 2) + ["no"]
    rng.shuffle(choices)
    return choices


def write_vqa_sources(root: Path, scenes: Scenes, vqa: Dict[str, List[Dict[str, Any]]],
                      answer_list: Sequence[str], seed: int = 0) -> Dict[str, Path]:
    """Write the files above; returns them keyed e.g. ``okvqa_train``, ``aokvqa_val``, ``gqa_testdev``."""
    root = Path(root)
    written: Dict[str, Path] = {}
    coco = root / "coco" / "annotations"
    official = _official(vqa["val"])
    written["vqa_val_eval"] = _write_json(coco / "vqa_val_eval.json", vqa["val"])
    written["vqa_val_questions"] = _write_json(coco / "v2_OpenEnded_mscoco_val2014_questions.json", official["questions"])
    written["vqa_val_annotations"] = _write_json(coco / "v2_mscoco_val2014_annotations.json", official["annotations"])

    ok = root / "okvqa" / "annotations"
    written["okvqa_train"] = _write_json(ok / "okvqa_train.json", vqa["train"])
    written["okvqa_test"] = _write_json(ok / "vqa_val_eval.json", vqa["val"])
    written["okvqa_answer_list"] = _write_json(ok / "answer_list.json", list(answer_list))
    written["okvqa_questions"] = _write_json(ok / "OpenEnded_mscoco_val2014_questions.json", official["questions"])
    written["okvqa_annotations"] = _write_json(ok / "mscoco_val2014_annotations.json", official["annotations"])

    aok = root / "aokvqa" / "annotations"
    vocab: Dict[str, None] = {}
    for split in ("train", "val", "test"):
        records = []
        answers_of = {r["question_id"]: r["answer"] for r in vqa[split]}
        for scene in scenes[split]:
            s = scene["scene_index"]
            questions = scene_questions(s, seed)
            for k, kind in ((0, "colour"), (1, "shape")):
                question, answer = questions[k]
                rng = random.Random(f"aokvqa:{seed}:{s}:{k}")
                choices = _choices(answer, kind, rng)
                record: Dict[str, Any] = {"split": split, "image_id": s, "question_id": f"aok_{s}_{k}",
                                          "question": question, "choices": choices, "image": scene["name"]}
                if split != "test":
                    direct = answers_of[s * 10 + k]
                    vocab.update(dict.fromkeys(direct))
                    record.update(correct_choice_idx=choices.index(answer), direct_answers=list(direct),
                                  difficult_direct_answer=False,
                                  rationales=[f"the {'left shape is' if k == 0 else 'right shape is a'} {answer}."])
                records.append(record)
        written[f"aokvqa_{split}"] = _write_json(aok / f"aokvqa_v1p0_{split}.json", records)
    vocab.update(dict.fromkeys(c for c in list(COLOURS) + list(SHAPES) + ["yes", "no"]))
    written["aokvqa_answer_list"] = _write_json(aok / "specialized_vocab_train_lavis.json", sorted(vocab))
    written["aokvqa_large_vocab"] = _write_json(aok / "large_vocab_train_lavis.json", sorted(vocab))

    gqa_images, gqa = root / "gqa" / "images", root / "gqa" / "annotations"
    gqa_records: Dict[str, List[Dict[str, Any]]] = {}
    for split in ("train", "val", "test"):
        gqa_records[split] = []
        for scene in scenes[split]:
            s = scene["scene_index"]
            image = f"n{s}.png"
            _write_image(gqa_images / image, scene["png"])
            for k, (question, answer) in enumerate(scene_questions(s, seed)):
                gqa_records[split].append({"question_id": f"{s}{k}", "question": question, "answer": answer,
                                           "fullAnswer": f"{answer}.", "image": image})
    test_no_answers = [{k: v for k, v in r.items() if k not in ("answer", "fullAnswer")} for r in gqa_records["test"]]
    for key, name, records in (("gqa_train", "train_balanced_questions.json", gqa_records["train"]),
                               ("gqa_val", "val_balanced_questions.json", gqa_records["val"]),
                               ("gqa_testdev", "testdev_balanced_questions.json", gqa_records["test"]),
                               ("gqa_test", "test_balanced_questions.json", test_no_answers),
                               ("gqa_train_all", "train_all_questions_0.json", gqa_records["train"]),
                               ("gqa_val_all", "val_all_questions.json", gqa_records["val"])):
        written[key] = _write_json(gqa / name, records)
    written["gqa_images"] = gqa_images

    vg_records = []
    for scene in scenes["train"]:
        s = scene["scene_index"]
        image = f"VG_100K/{s}.png"
        _write_image(root / "vg" / "images" / image, scene["png"])
        for k, (question, answer) in enumerate(scene_questions(s, seed)):
            vg_records.append({"image": image, "question": question, "answer": answer, "question_id": s * 10 + k,
                               "dataset": "vg"})
    written["vg_qa"] = _write_json(root / "vg" / "annotations" / "vg_qa.json", vg_records)
    return written
