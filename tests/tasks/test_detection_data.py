"""Detection / grounding builders on files the tests write: COCO JSON, the seed's JSONL and
HF layouts, grounding JSONL; skips counted, bad rows named; boxes moved by augmentation."""
from __future__ import annotations

import tests.helpers  # noqa: F401

import json

import pytest
import torch
from omegaconf import OmegaConf

import vlft.datasets.builders  # noqa: F401  (registers the builders)
import vlft.processors  # noqa: F401
from vlft.common.registry import registry
from vlft.datasets.synthetic_detection import (scene_boxes, write_coco_detection, write_florence_jsonl,
                                               write_grounding_jsonl)
from vlft.processors.florence2 import Florence2ImageTrainProcessor, dequantize, parse_boxes, quantize
from vlft.datasets.synthetic_shapes import make_scene

VIS = {"train": {"name": "florence2_image_eval", "image_size": 64}, "eval": {"name": "florence2_image_eval", "image_size": 64}}


def build(name: str, build_info: dict, vis=None):
    cfg = OmegaConf.create({"vis_processor": vis or VIS, "build_info": build_info})
    return registry.get_builder_class(name)(cfg).build_datasets()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    for split, n in (("train", 4), ("val", 3)):
        write_coco_detection(root, split, n)
        write_florence_jsonl(root, split, n)
        write_grounding_jsonl(root, split, n)
    return root


def test_coco_detection_counts_skips_and_keeps_crowds_out_of_targets(root):
    data = json.loads((root / "instances_val.json").read_text())
    data["annotations"] += [
        {"id": 0, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "iscrowd": 0},     # zero area
        {"id": 90, "image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 30], "iscrowd": 0},  # leaves the image
        {"id": 91, "image_id": 1, "category_id": 77, "bbox": [5, 5, 10, 10], "iscrowd": 0},   # unknown category
        {"id": 92, "image_id": 1, "category_id": 2, "bbox": [0, 0, 64.5, 64], "iscrowd": 1},  # crowd, clamped
    ]
    (root / "bad.json").write_text(json.dumps(data))
    splits = build("coco_detection", {"annotations": {"train": {"storage": str(root / "bad.json")},
                                                      "val": {"storage": str(root / "bad.json")}}})
    train, val = splits["train"], splits["val"]
    assert dict(train.source.skipped) == {"zero_area": 1, "outside_image": 1, "unknown_category": 1}
    assert train.categories[:2] == ["red circle", "red square"]
    item = train[0]
    objects = scene_boxes(1_000_000, 0, 64)
    assert item["text_input"] == "<OD>" and item["image"].shape == (3, 64, 64)
    assert parse_boxes(item["text_output"], (64, 64)).labels == [c for c, _ in objects]  # no crowd target
    truth = val.ground_truth()
    assert [a["id"] for a in truth["annotations"]] == list(range(1, len(truth["annotations"]) + 1))
    crowd = [a for a in truth["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and crowd[0]["bbox"] == [0.0, 0.0, 64.0, 64.0]
    assert truth["annotations"][0]["bbox"] == pytest.approx([objects[0][1][0], objects[0][1][1], 
                                                              objects[0][1][2] - objects[0][1][0],
                                                              objects[0][1][3] - objects[0][1][1]])
    sample = val[0]
    assert sample["prompt"] == "<OD>" and sample["orig_size"].tolist() == [64.0, 64.0]


def test_florence_jsonl_keeps_the_suffix_and_dequantises_the_truth(root):
    splits = build("florence_jsonl", {"annotations": {"train": {"storage": str(root / "train.jsonl")},
                                                      "val": {"storage": str(root / "val.jsonl")}}})
    row = json.loads((root / "train.jsonl").read_text().splitlines()[0])
    item = splits["train"][0]
    assert item["text_input"] == "<OD>" and item["text_output"] == row["suffix"]
    truth = splits["val"].ground_truth()
    first = truth["annotations"][0]
    box = scene_boxes(1_000_000, 0, 64)[0][1]
    centre = dequantize(quantize([box], (64, 64)), (64, 64))[0].tolist()
    assert first["bbox"] == pytest.approx([centre[0], centre[1], centre[2] - centre[0], centre[3] - centre[1]])
    assert {c["name"] for c in truth["categories"]} >= {scene_boxes(1_000_000, 0, 64)[0][0]}


@pytest.mark.parametrize("row, message", [
    ({"image": "x.png", "prefix": "<OD> please", "suffix": "car<loc_1><loc_2><loc_3><loc_4>"}, "bad.jsonl:2: prefix"),
    ({"image": "x.png", "prefix": "<OD>", "suffix": "car<loc_1><loc_2><loc_3>"}, "bad.jsonl:2: .*3 loc tokens"),
    ({"image": "x.png", "prefix": "<OD>", "suffix": "car<loc_9><loc_2><loc_3><loc_4>"}, "bad.jsonl:2: box .*x1 < x0"),
    ({"image": "x.png", "prefix": "<OD>", "suffix": "just words"}, "bad.jsonl:2: .*text without boxes"),
])
def test_florence_jsonl_names_the_bad_row(root, row, message):
    good = (root / "train.jsonl").read_text().splitlines()[0]
    (root / "bad.jsonl").write_text(good + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=message):
        build("florence_jsonl", {"annotations": {"train": {"storage": str(root / "bad.jsonl")}}})


def test_hf_florence_reads_the_seed_layout_with_a_seeded_split(root, tmp_path):
    import datasets

    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()] * 2
    table = datasets.Dataset.from_dict({"image": [make_scene(i)["image"] for i in range(len(rows))],
                                        "prefix": [r["prefix"] for r in rows], "suffix": [r["suffix"] for r in rows]})
    table = table.cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "hf"))
    info = {"path": str(tmp_path / "hf"), "split_ratios": {"train": 0.75, "val": 0.25}, "split_seed": 3,
            "annotations": {"train": {}, "val": {}}}
    first, again = build("hf_florence", info), build("hf_florence", info)
    ids = {s: [r["image_id"] for r in first[s].records] for s in ("train", "val")}
    assert len(ids["train"]) == 6 and len(ids["val"]) == 2 and not set(ids["train"]) & set(ids["val"])
    assert ids == {s: [r["image_id"] for r in again[s].records] for s in ("train", "val")}
    item = first["train"][0]
    assert item["text_output"] == rows[ids["train"][0]]["suffix"] and item["image"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="no column 'caption'"):
        build("hf_florence", {**info, "suffix_column": "caption"})


def test_grounding_jsonl_prompts_with_the_caption(root):
    splits = build("grounding_jsonl", {"annotations": {"train": {"storage": str(root / "grounding_train.jsonl")},
                                                       "val": {"storage": str(root / "grounding_val.jsonl")}}})
    (c0, b0), (c1, _) = scene_boxes(0, 0, 64)
    item = splits["train"][0]
    assert item["text_input"] == f"<CAPTION_TO_PHRASE_GROUNDING>a {c0} to the left of a {c1}"
    assert parse_boxes(item["text_output"], (64, 64)).labels == [f"a {c0}", f"a {c1}"]
    target = splits["val"].instance_targets()[0]
    assert target["phrases"] == [f"a {c}" for c, _ in scene_boxes(1_000_000, 0, 64)] and len(target["boxes"]) == 2


def test_flip_moves_boxes_unless_the_text_names_a_side(root):
    flip = {"train": {"name": "florence2_image_train", "image_size": 64, "hflip": 1.0}, "eval": VIS["eval"]}
    od = build("florence_jsonl", {"annotations": {"train": {"storage": str(root / "train.jsonl")}}}, flip)["train"]
    (c0, (x0, y0, x1, y1)), (c1, _) = scene_boxes(0, 0, 64)
    parsed = parse_boxes(od[0]["text_output"], (64, 64))
    mirrored = [64 - x1, y0, 64 - x0, y1]
    assert parsed.labels[0] == c0 and parsed.boxes[0] == pytest.approx(mirrored, abs=64 / 1000)
    grounding = build("grounding_jsonl", {"annotations": {"train": {"storage": str(root / "grounding_train.jsonl")}}},
                      flip)["train"]
    unflipped = parse_boxes(grounding[0]["text_output"], (64, 64))  # "... to the left of ...": never flipped
    assert unflipped.boxes[0] == pytest.approx([x0, y0, x1, y1], abs=64 / 1000) and grounding.unflipped == 1


def test_crops_drop_boxes_left_outside():
    image = make_scene(0)["image"]
    objects = scene_boxes(0, 0, 64)
    proc = Florence2ImageTrainProcessor(image_size=32, crop_scale=[0.1, 0.3])
    kept = []
    torch.manual_seed(0)
    for _ in range(20):
        tensor, boxes, labels, size = proc.with_boxes(image, [b for _, b in objects], [c for c, _ in objects])
        assert tensor.shape == (3, 32, 32) and size == (32, 32) and len(boxes) == len(labels)
        assert all(0 <= v <= 32 for b in boxes.tolist() for v in b)
        assert all(b[2] - b[0] >= 1 and b[3] - b[1] >= 1 for b in boxes.tolist())
        kept.append(len(labels))
    assert min(kept) < 2 <= max(kept) + 1  # some crops lose a shape
    with pytest.raises(ValueError, match="crop_scale"):
        Florence2ImageTrainProcessor(crop_scale=[0.5, 2])
