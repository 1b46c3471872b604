"""Synthetic stand-ins for LAVIS's caption-pair, NoCaps and NLVR2 files (called by
``synthetic_lavis``), under the root::

    nocaps/images/{val,test}/NNNNNN.png
    nocaps/annotations/nocaps_{val,test}.json          nocaps: {"image", "img_id"} per image
    nocaps/annotations/nocaps_val_4500_captions.json   NoCaps's references (COCO format), for
                                                       the captioning task's run.annotation_file
    vg/images/VG_100K/SCENE.png, vg/annotations/vg_caption.json          vg_caption
    conceptual_caption/images/NNNNNNNN.png, .../annotations/cc3m.json    conceptual_caption_3m
    conceptual_caption/images_12m/NNNNNNNN.png, .../annotations/cc12m.json  conceptual_caption_12m
    sbu_captions/images/NNNNNNNN.png, sbu_captions/annotations/sbu.json  sbu_caption
    nlvr/images/{train,dev,test}/pairK-img{0,1}.png
    nlvr/annotations/{train,dev,test}.json             nlvr (dev: the val scenes)

The pair files (training scenes) are lists of ``{"image", "caption"}``: Visual Genome
has two records per image (the scene caption and "a picture of ..."), the others one.
NoCaps uses the val / test scenes; ``img_id`` is the scene's position in its split and
the references are the two captions of the COCO val / test files. NLVR2 pair ``K`` of a
split shows its scenes ``K`` and ``K + 1`` (left, right) and one sentence about them,
"the left image has a red circle", "the right image has ...", or (no side named, so
the training flip only swaps the images) "an image has ..."; the object is from the
image the sentence names in about half the pairs and drawn at random otherwise, and
``label`` says whether the sentence holds ("True" / "False"). Deterministic.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List

from vlft.datasets.synthetic_lavis import _write_image, _write_json, caption_variant
from vlft.datasets.synthetic_shapes import COLOURS, SHAPES, scene_objects

Scenes = Dict[str, List[Dict[str, Any]]]
_SIDES = ("left", "right", None)  # NLVR2 sentence kinds, in turn


def _nocaps(root: Path, scenes: Scenes) -> Dict[str, Path]:
    written: Dict[str, Path] = {}
    images, ann = root / "nocaps" / "images", root / "nocaps" / "annotations"
    for split in ("val", "test"):
        records = []
        for scene in scenes[split]:
            _write_image(images / scene["name"], scene["png"])
            records.append({"image": scene["name"], "img_id": scene["i"]})
        written[f"nocaps_{split}"] = _write_json(ann / f"nocaps_{split}.json", records)
    references = {"images": [{"id": s["i"], "file_name": s["name"]} for s in scenes["val"]], "annotations": [
        {"image_id": s["i"], "id": 2 * s["i"] + k, "caption": c}
        for s in scenes["val"] for k, c in enumerate((s["caption"], caption_variant(s["caption"])))]}
    written["nocaps_val_references"] = _write_json(ann / "nocaps_val_4500_captions.json", references)
    written["nocaps_images"] = images
    return written


def _pairs(root: Path, scenes: Scenes) -> Dict[str, Path]:
    written: Dict[str, Path] = {}
    vg = []
    for scene in scenes["train"]:
        image = f"VG_100K/{scene['scene_index']}.png"
        _write_image(root / "vg" / "images" / image, scene["png"])
        vg += [{"image": image, "caption": scene["caption"]}, {"image": image, "caption": caption_variant(scene["caption"])}]
    written["vg_caption"] = _write_json(root / "vg" / "annotations" / "vg_caption.json", vg)
    for key, folder, images, name in (("cc3m", "conceptual_caption", "images", "cc3m.json"),
                                      ("cc12m", "conceptual_caption", "images_12m", "cc12m.json"),
                                      ("sbu", "sbu_captions", "images", "sbu.json")):
        records = []
        for scene in scenes["train"]:
            image = f"{scene['i']:08d}.png"
            _write_image(root / folder / images / image, scene["png"])
            records.append({"image": image, "caption": scene["caption"]})
        written[key] = _write_json(root / folder / "annotations" / name, records)
    return written


def nlvr_sentence(left: int, right: int, k: int, seed: int = 0):
    """Pair ``k``'s sentence about scenes ``left`` and ``right``, and whether it holds."""
    rng = random.Random(f"nlvr:{seed}:{left}:{right}:{k}")
    objects = {"left": scene_objects(left, seed), "right": scene_objects(right, seed)}
    side = _SIDES[k % len(_SIDES)]
    shown = objects[side] if side else objects["left"] + objects["right"]
    colour, shape = rng.choice(shown) if rng.random() < 0.5 else (rng.choice(list(COLOURS)), rng.choice(SHAPES))
    where = f"the {side} image" if side else "an image"
    return f"{where} has a {colour} {shape}", (colour, shape) in shown


def _nlvr(root: Path, scenes: Scenes, seed: int) -> Dict[str, Path]:
    written: Dict[str, Path] = {}
    for split, file in (("train", "train"), ("val", "dev"), ("test", "test")):
        records, these = [], scenes[split]
        for k, scene in enumerate(these):
            other = these[(k + 1) % len(these)]
            names = [f"{file}/pair{k}-img0.png", f"{file}/pair{k}-img1.png"]
            for name, shown in zip(names, (scene, other)):
                _write_image(root / "nlvr" / "images" / name, shown["png"])
            sentence, holds = nlvr_sentence(scene["scene_index"], other["scene_index"], k, seed)
            records.append({"images": names, "sentence": sentence, "label": "True" if holds else "False",
                            "identifier": f"{file}-{k}-0"})
        written[f"nlvr_{file}"] = _write_json(root / "nlvr" / "annotations" / f"{file}.json", records)
    written["nlvr_images"] = root / "nlvr" / "images"
    return written


def write_pair_sources(root: Path, scenes: Scenes, seed: int = 0) -> Dict[str, Path]:
    """Write the files above; returns them keyed e.g. ``nocaps_val``, ``vg_caption``, ``nlvr_dev``."""
    root = Path(root)
    return {**_nocaps(root, scenes), **_pairs(root, scenes), **_nlvr(root, scenes, seed)}
