"""Synthetic data in LAVIS's file layout, for demos and end-to-end tests of the file builders.

:func:`write_shapes_lavis` draws the deterministic scenes of
``vlft.datasets.synthetic_shapes`` (two coloured shapes, e.g. "a red circle to the
left of a blue square") and writes them where the default YAMLs of the LAVIS-format
builders look, relative to a cache root::

    root/coco/images/{train,val,test}/NNNNNN.png
    root/coco/annotations/coco_karpathy_{train,val,test}.json   coco_caption, coco_retrieval
    root/coco/annotations/vqa_{train,val,test}.json             coco_vqa
    root/coco/annotations/answer_list.json                      coco_vqa
    root/flickr30k/images/{train,val,test}/NNNNNN.png
    root/flickr30k/annotations/{train,val,test}.json            flickr30k

and, with ``all_builders`` (the default), tiny stand-ins for every other LAVIS-format
builder: ``coco_vqa`` type ``eval``, ``ok_vqa``, ``aok_vqa``, ``gqa`` (all three types)
and ``vg_vqa`` (``vlft.datasets.synthetic_lavis_vqa``), ``nocaps``, ``vg_caption``,
``conceptual_caption_3m`` / ``_12m``, ``sbu_caption`` and ``nlvr``
(``vlft.datasets.synthetic_lavis_pairs``, which also documents the layouts),
so that ``run.cache_root: root`` is the only setting those builders need. Formats of
the COCO-style files:

- Karpathy / Flickr30k: train has one record per caption (one caption per image:
  the scene caption, so a caption model learns one target); val/test have one record
  per image with two captions, the scene caption and "a picture of ..." (a
  paraphrase whose words the synthetic tokenizers know), so retrieval has several
  texts per image and captioning several references.
- VQA: the four questions of ``scene_questions`` per image, ten annotator answers each:
  usually ten copies of the answer, sometimes (about 3 in 10 questions) one annotator
  dissents with another answer of the same kind (another colour, another shape, the
  opposite yes/no), so the soft VQA targets and VQA accuracy (min(#humans/3, 1)) are
  not all 0 or 1. Every split has answers (so the test split can be scored too).
  ``answer_list.json`` holds every distinct answer.

Scenes are those of the ``synthetic_shapes`` builder (train scene ``i`` is scene ``i``,
val ``1_000_000 + i``, test ``2_000_000 + i``). The same arguments write the same
bytes. CLI: ``python -m vlft.datasets.synthetic_lavis --root DIR``.
"""
from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from vlft.datasets.synthetic_shapes import COLOURS, SHAPES, make_scene, scene_questions

SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # the synthetic_shapes builder's
N_ANNOTATORS = 10
DISSENT_PROBABILITY = 0.3
# scene_questions() order: the kind of answer, LAVIS's answer_type, a VQAv2-style question_type
_QUESTION_KINDS = (("colour", "other", "what colour is the"), ("shape", "other", "what shape is"),
                   ("yes/no", "yes/no", "is there a"), ("yes/no", "yes/no", "is the"))
_ALTERNATIVES = {"colour": list(COLOURS), "shape": list(SHAPES), "yes/no": ["yes", "no"]}


def caption_variant(caption: str) -> str:
    """The second reference caption of a val/test image."""
    return f"a picture of {caption}"


def annotator_answers(answer: str, kind: str, rng: random.Random) -> List[str]:
    """Ten annotator answers: ``answer`` ten times, or nine times and one dissent."""
    answers = [answer] * N_ANNOTATORS
    if rng.random() < DISSENT_PROBABILITY:
        others = [a for a in _ALTERNATIVES[kind] if a != answer]
        answers[rng.randrange(N_ANNOTATORS)] = rng.choice(others)
    return answers


def write_shapes_lavis(root, n_train: int = 32, n_val: int = 8, n_test: int = 8, image_size: int = 64,
                       seed: int = 0, all_builders: bool = True) -> Dict[str, Path]:
    """Write the synthetic scenes and their LAVIS-format annotations under ``root``.

    Returns what was written: ``coco_images``, ``coco_karpathy_{split}``,
    ``vqa_{split}``, ``answer_list``, ``flickr30k_images``, ``flickr30k_{split}`` and,
    with ``all_builders``, the files of the other builders (keys listed by
    ``synthetic_lavis_vqa.write_vqa_sources`` and ``synthetic_lavis_pairs.write_pair_sources``).
    """
    root = Path(root)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if n < 0:
            raise ValueError(f"write_shapes_lavis: n_{split} must be >= 0, got {n}")
    coco_images, flickr_images = root / "coco" / "images", root / "flickr30k" / "images"
    coco_ann, flickr_ann = root / "coco" / "annotations", root / "flickr30k" / "annotations"
    for folder in (coco_ann, flickr_ann):
        folder.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {"coco_images": coco_images, "flickr30k_images": flickr_images}
    answers_seen: Dict[str, None] = {}  # ordered set
    scenes: Dict[str, List[Dict[str, Any]]] = {}  # what the other builders' writers reuse
    vqa_records: Dict[str, List[Dict[str, Any]]] = {}

    for split, n in counts.items():
        for folder in (coco_images, flickr_images):
            (folder / split).mkdir(parents=True, exist_ok=True)
        karpathy: List[Dict[str, Any]] = []
        flickr: List[Dict[str, Any]] = []
        vqa: List[Dict[str, Any]] = []
        scenes[split], vqa_records[split] = [], vqa
        for i in range(n):
            scene_index = SPLIT_OFFSET[split] + i
            scene = make_scene(scene_index, seed, image_size)
            name = f"{split}/{i:06d}.png"
            png = _png_bytes(scene["image"])
            (coco_images / name).write_bytes(png)
            (flickr_images / name).write_bytes(png)
            caption = scene["caption"]
            scenes[split].append({"split": split, "i": i, "scene_index": scene_index, "name": name, "png": png,
                                  "caption": caption})
            if split == "train":
                karpathy.append({"image": name, "caption": caption, "image_id": f"shapes_{scene_index}"})
                flickr.append({"image": name, "caption": caption, "image_id": i})
            else:
                captions = [caption, caption_variant(caption)]
                karpathy.append({"image": name, "caption": captions})
                flickr.append({"image": name, "caption": captions})
            for k, (question, answer) in enumerate(scene_questions(scene_index, seed)):
                kind, answer_type, question_type = _QUESTION_KINDS[k]
                rng = random.Random(f"vqa:{seed}:{scene_index}:{k}")
                answers = annotator_answers(answer, kind, rng)
                answers_seen.update(dict.fromkeys(answers))
                vqa.append({"question_id": scene_index * 10 + k, "question": question, "answer": answers,
                            "image": name, "answer_type": answer_type, "question_type": question_type})
        written[f"coco_karpathy_{split}"] = _write_json(coco_ann / f"coco_karpathy_{split}.json", karpathy)
        written[f"vqa_{split}"] = _write_json(coco_ann / f"vqa_{split}.json", vqa)
        written[f"flickr30k_{split}"] = _write_json(flickr_ann / f"{split}.json", flickr)
    written["answer_list"] = _write_json(coco_ann / "answer_list.json", sorted(answers_seen))
    if all_builders:
        # imported here: these modules use this one's helpers
        from vlft.datasets.synthetic_lavis_pairs import write_pair_sources
        from vlft.datasets.synthetic_lavis_vqa import write_vqa_sources

        written.update(write_vqa_sources(root, scenes, vqa_records, sorted(answers_seen), seed))
        written.update(write_pair_sources(root, scenes, seed))
    return written


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # tiny images: speed over size
    return buf.getvalue()


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_image(path: Path, png: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    parser = argparse.ArgumentParser(
        prog="python -m vlft.datasets.synthetic_lavis",
        description="Write synthetic shapes scenes with LAVIS-format annotations under DIR for every "
                    "LAVIS-format builder (coco_caption, coco_retrieval, coco_vqa, flickr30k, nocaps, ok_vqa, "
                    "aok_vqa, gqa, vg_vqa, vg_caption, conceptual_caption_3m/_12m, sbu_caption, nlvr); then set "
                    "run.cache_root: DIR.")
    parser.add_argument("--root", required=True, help="the folder to write into (used as run.cache_root)")
    parser.add_argument("--n-train", type=int, default=32)
    parser.add_argument("--n-val", type=int, default=8)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coco-only", action="store_true", help="only the COCO / Flickr30k files")
    args = parser.parse_args(argv)
    written = write_shapes_lavis(args.root, args.n_train, args.n_val, args.n_test, args.image_size, args.seed,
                                 all_builders=not args.coco_only)
    print(f"wrote {args.n_train} train / {args.n_val} val / {args.n_test} test scenes "
          f"({args.image_size}px, seed {args.seed}) under {Path(args.root).resolve()}:")
    for key, path in written.items():
        print(f"  {key:30s} {path}")
    print(f"use it with: --options run.cache_root={Path(args.root).resolve()}")
    return written


if __name__ == "__main__":
    main()
