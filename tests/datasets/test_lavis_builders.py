"""The LAVIS-format builders added for LAVIS's BLIP / BLIP-2 projects (nocaps, ok_vqa,
aok_vqa, gqa, vg_vqa, coco_vqa type eval, vg_caption, conceptual_caption_3m / _12m,
sbu_caption, nlvr), built from their default YAMLs on ``write_shapes_lavis``'s
stand-ins: lengths, item keys, values against the files, and the errors a bad row gives."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from tests.datasets.conftest import build, corrupt_bytes
from vlft.common.registry import registry
from vlft.common.utils import resolve_config_file
from vlft.datasets.nlvr_datasets import NLVRDataset, flip_pair
from vlft.datasets.synthetic_lavis import write_shapes_lavis
from vlft.datasets.synthetic_shapes import scene_caption, scene_questions
from vlft.runners.data import collate_fn_of

N_TRAIN, N_VAL, N_TEST = 4, 3, 2


def defaults(name: str, type: str = "default") -> dict:
    """The builder's default YAML section without its image processors (conftest's 16 px ones are used)."""
    path = resolve_config_file(registry.get_builder_class(name).DATASET_CONFIG_DICT[type])
    cfg = OmegaConf.to_container(OmegaConf.load(path).datasets[name])
    cfg.pop("vis_processor")
    return cfg


@pytest.fixture(scope="module")
def lavis(tmp_path_factory):
    root = tmp_path_factory.mktemp("lavis")
    written = write_shapes_lavis(root, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, image_size=32)
    return root, written, {"cache_root": str(root)}


def load(written, key):
    return json.loads(Path(written[key]).read_text())


def test_nocaps_is_evaluation_only_with_img_ids(lavis):
    root, written, run_cfg = lavis
    ds = build("nocaps", defaults("nocaps"), run_cfg)
    assert {k: len(v) for k, v in ds.items()} == {"val": N_VAL, "test": N_TEST}
    item = ds["val"][2]
    assert set(item) == {"image", "image_id", "instance_id"} and item["image_id"] == 2 and item["image"].shape == (3, 16, 16)
    assert ds["val"].ground_truth() == {0: [], 1: [], 2: []}  # LAVIS's files hold no captions
    cfg = defaults("nocaps")
    cfg["build_info"]["annotations"]["train"] = {"storage": "nocaps/annotations/nocaps_val.json"}
    with pytest.raises(ValueError, match=r"NoCapsBuilder: cannot build split 'train': this builder has evaluation "
                                         r"splits only .* remove build_info.annotations.train"):
        build("nocaps", cfg, run_cfg)


def test_caption_pair_builders_give_no_image_ids(lavis):
    root, written, run_cfg = lavis
    vg = build("vg_caption", defaults("vg_caption"), run_cfg)["train"]
    assert len(vg) == 2 * N_TRAIN  # two descriptions per image
    item = vg[1]
    assert set(item) == {"image", "text_input", "instance_id"}
    assert item["text_input"] == f"a picture of {scene_caption(0)}" and vg[2]["text_input"] == scene_caption(1)
    for name, key in (("conceptual_caption_3m", "cc3m"), ("conceptual_caption_12m", "cc12m"), ("sbu_caption", "sbu")):
        train = build(name, defaults(name), run_cfg)["train"]
        assert len(train) == N_TRAIN and train[3]["text_input"] == scene_caption(3)
        assert load(written, key)[3] == {"image": "00000003.png", "caption": scene_caption(3)}
    # pretraining mixes coco_caption (image ids) with these (none): a batch keeps the shared keys, as LAVIS
    coco = build("coco_caption", {"build_info": defaults("coco_caption")["build_info"]}, run_cfg)["train"]
    batch = coco.collater([coco[0], vg[0], None, vg[3]])
    assert set(batch) == {"image", "text_input", "instance_id"} and batch["image"].shape == (3, 3, 16, 16)
    assert set(coco.collater([coco[0], coco[1]])) == {"image", "text_input", "image_id", "instance_id"}


def test_ok_vqa_reads_lavis_storage_lists(lavis):
    root, written, run_cfg = lavis
    ds = build("ok_vqa", defaults("ok_vqa"), run_cfg)
    assert sorted(ds) == ["test", "train"] and len(ds["train"]) == 4 * N_TRAIN and len(ds["test"]) == 4 * N_VAL
    records = load(written, "okvqa_test")
    test = ds["test"]
    assert test.ground_truth() == {r["question_id"]: r["answer"] for r in records}
    assert test.answer_list == load(written, "okvqa_answer_list")  # named in the storage list
    assert set(test.answer_types().values()) == {"other", "yes/no"}  # merged from the official annotations
    item = ds["train"][0]
    assert item["answers"][0] == scene_questions(0)[0][1] and sum(item["weights"]) == pytest.approx(1.0)


def test_coco_vqa_type_eval_is_lavis_eval_vqa(lavis):
    root, written, run_cfg = lavis
    cfg = defaults("coco_vqa", "eval")
    assert [s.split("/")[-1] for s in cfg["build_info"]["annotations"]["val"]["storage"]] == [
        "vqa_val_eval.json", "answer_list.json", "v2_OpenEnded_mscoco_val2014_questions.json",
        "v2_mscoco_val2014_annotations.json"]
    ds = build("coco_vqa", cfg, run_cfg)
    assert list(ds) == ["val"] and len(ds["val"]) == 4 * N_VAL
    assert ds["val"].answer_list == load(written, "answer_list")
    assert ds["val"].ground_truth()[1_000_000 * 10 + 2] == load(written, "vqa_val")[2]["answer"]


def test_aok_vqa_direct_answers_and_choices(lavis):
    root, written, run_cfg = lavis
    ds = build("aok_vqa", defaults("aok_vqa"), run_cfg)
    train, val, test = ds["train"], ds["val"], ds["test"]
    assert (len(train), len(val), len(test)) == (2 * N_TRAIN, 2 * N_VAL, 2 * N_TEST)
    record = load(written, "aokvqa_train")[0]
    item = train[0]
    weights = dict(zip(item["answers"], item["weights"]))
    assert weights == {a: pytest.approx(record["direct_answers"].count(a) / 10) for a in set(record["direct_answers"])}
    assert item["question_id"] == "aok_0_0"

    records = load(written, "aokvqa_val")
    item = val[1]
    assert set(item) == {"image", "text_input", "question_id", "instance_id", "choices", "correct_choice_idx",
                         "direct_answers"}
    assert (item["question_id"], item["choices"], item["correct_choice_idx"]) == (
        "aok_1000000_1", records[1]["choices"], records[1]["correct_choice_idx"])
    assert val.ground_truth() == {r["question_id"]: r["direct_answers"] for r in records}
    assert val.correct_choices() == {r["question_id"]: r["choices"][r["correct_choice_idx"]] for r in records}
    assert val.correct_choices()["aok_1000000_0"] == scene_questions(1_000_000)[0][1]
    assert val.answer_list == load(written, "aokvqa_answer_list")
    batch = next(iter(DataLoader(val, batch_size=3, collate_fn=collate_fn_of(val))))
    assert batch["choices"] == [r["choices"] for r in records[:3]] and batch["image"].shape == (3, 3, 16, 16)
    assert batch["correct_choice_idx"] == [r["correct_choice_idx"] for r in records[:3]]
    assert test.ground_truth() == {q: [] for q in test.question_ids} and test.correct_choices() == {}
    assert test[0]["direct_answers"] is None and test[0]["correct_choice_idx"] is None


def test_gqa_types_as_lavis(lavis):
    root, written, run_cfg = lavis
    assert sorted(registry.get_builder_class("gqa").DATASET_CONFIG_DICT) == ["balanced_testdev", "balanced_val", "default"]
    ds = build("gqa", defaults("gqa", "balanced_testdev"), run_cfg)
    assert {k: len(v) for k, v in ds.items()} == {"train": 4 * N_TRAIN, "val": 4 * N_TEST, "test": 4 * N_TEST}
    item = ds["train"][5]
    assert (item["answers"], item["weights"], item["question_id"]) == ([scene_questions(1)[1][1]], [1.0], "11")
    assert ds["val"].ground_truth()["20000013"] == [scene_questions(2_000_001)[3][1]]  # testdev: the test scenes
    assert set(map(len, ds["test"].ground_truth().values())) == {0}  # GQA's test has no answers
    val = build("gqa", defaults("gqa", "balanced_val"), run_cfg)["val"]
    assert len(val) == 4 * N_VAL and val[0]["text_input"] == "what colour is the left shape?"
    # LAVIS's default type points val / test at A-OKVQA files: refused with the way out
    with pytest.raises(ValueError, match=r"gqa: record 0 of .*aokvqa_v1p0_val.json has 'direct_answers' and no "
                                         r"'answer': this is an A-OKVQA file.*balanced_val or balanced_testdev"):
        build("gqa", defaults("gqa"), run_cfg)
    train_only = defaults("gqa")
    train_only["build_info"]["annotations"] = {"train": train_only["build_info"]["annotations"]["train"]}
    assert len(build("gqa", train_only, run_cfg)["train"]) == 4 * N_TRAIN + 4 * N_VAL  # train_all + val_all


def test_vg_vqa_is_training_only(lavis):
    root, written, run_cfg = lavis
    train = build("vg_vqa", defaults("vg_vqa"), run_cfg)["train"]
    assert len(train) == 4 * N_TRAIN
    assert (train[2]["answers"], train[2]["weights"]) == ([scene_questions(0)[2][1]], [1.0])
    cfg = defaults("vg_vqa")
    cfg["build_info"]["annotations"]["val"] = cfg["build_info"]["annotations"]["train"]
    with pytest.raises(ValueError, match="VGVQABuilder: cannot build split 'val': this builder has a training split"):
        build("vg_vqa", cfg, run_cfg)


def test_nlvr_pairs_labels_and_batches(lavis):
    root, written, run_cfg = lavis
    ds = build("nlvr", defaults("nlvr"), run_cfg)
    assert {k: len(v) for k, v in ds.items()} == {"train": N_TRAIN, "val": N_VAL, "test": N_TEST}
    records = load(written, "nlvr_dev")
    val = ds["val"]
    item = val[1]
    assert set(item) == {"image0", "image1", "text_input", "label", "instance_id"}
    assert item["text_input"] == records[1]["sentence"] and item["instance_id"] == "1"
    assert [val[i]["label"] for i in range(N_VAL)] == [int(r["label"] == "True") for r in records]
    assert val.labels() == {str(i): int(r["label"] == "True") for i, r in enumerate(records)}
    # pair 1 shows val scenes 1 and 2: image1 of pair 1 is image0 of pair 2
    assert torch.equal(val[1]["image1"], val[2]["image0"]) and not torch.equal(item["image0"], item["image1"])
    batch = next(iter(DataLoader(val, batch_size=3, collate_fn=collate_fn_of(val))))
    assert batch["image0"].shape == batch["image1"].shape == (3, 3, 16, 16)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [val[i]["label"] for i in range(3)]
    assert batch["instance_id"] == ["0", "1", "2"] and batch["n_skipped"] == 0


def test_nlvr_training_flip_is_lavis(lavis):
    root, written, run_cfg = lavis
    train = build("nlvr", defaults("nlvr"), run_cfg)["train"]
    sentence = load(written, "nlvr_train")[0]["sentence"]
    assert sentence.startswith("the left image")
    seen = set()
    for seed in range(12):
        random.seed(seed)
        item = train[0]
        flipped = item["text_input"] != sentence
        assert item["text_input"] == (sentence.replace("left", "right") if flipped else sentence)
        seen.add(flipped)
    assert seen == {True, False}  # both ways happen
    raw = NLVRDataset.from_records(train.records, root / "nlvr" / "images")  # no processors: PIL images
    left, right = (np.asarray(Image.open(root / "nlvr" / "images" / p)) for p in train.records[0]["images"])
    for seed in range(6):
        random.seed(seed)
        item = raw[0]
        flipped = item["text_input"] != sentence
        assert np.array_equal(np.asarray(item["image0"]), right if flipped else left)
        assert np.array_equal(np.asarray(item["image1"]), left if flipped else right)
    # the images swap with the words, and the swap is LAVIS's substring replacement
    swapped = flip_pair({"image0": "a", "image1": "b", "text_input": "the left one is bright"}, rng=lambda: 0.2)
    assert swapped == {"image0": "b", "image1": "a", "text_input": "the right one is bleft"}
    kept = flip_pair({"image0": "a", "image1": "b", "text_input": "the left one"}, rng=lambda: 0.7)
    assert kept == {"image0": "a", "image1": "b", "text_input": "the left one"}
    no_side = flip_pair({"image0": "a", "image1": "b", "text_input": "two dogs"}, rng=lambda: 0.1)
    assert no_side == {"image0": "b", "image1": "a", "text_input": "two dogs"}


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    root = tmp_path / "data"
    write_shapes_lavis(root, n_train=3, n_val=2, n_test=1, image_size=32)
    (root / "nlvr" / "images" / "dev" / "pair1-img1.png").write_bytes(corrupt_bytes())
    (root / "sbu_captions" / "images" / "00000001.png").unlink()
    run_cfg = {"cache_root": str(root)}
    val = build("nlvr", defaults("nlvr"), run_cfg)["val"]
    assert val[1] is None and val[0] is not None
    batch = next(iter(DataLoader(val, batch_size=2, collate_fn=collate_fn_of(val))))
    assert batch["n_skipped"] == 1 and batch["instance_id"] == ["0"]
    sbu = build("sbu_caption", defaults("sbu_caption"), run_cfg)["train"]
    batch = next(iter(DataLoader(sbu, batch_size=3, collate_fn=collate_fn_of(sbu))))
    assert batch["n_skipped"] == 1 and len(batch["text_input"]) == 2


@pytest.mark.parametrize("name,split,record,message", [
    ("aok_vqa", "val", {"question_id": "q", "question": "q?", "image": "a.png"},
     r"aok_vqa: record 1 of .*bad.json has no 'choices' \(it has: question_id, question, image\)"),
    ("aok_vqa", "train", {"question_id": "q", "question": "q?", "image": "a.png", "choices": ["a"]},
     r"aok_vqa: record 1 of .*bad.json has no 'direct_answers'"),
    ("gqa", "train", {"question_id": "q", "question": "q?", "image": "a.png"},
     r"gqa: record 1 of .*bad.json has no 'answer'"),
    ("nocaps", "val", {"image": "a.png"}, r"nocaps: record 1 of .*bad.json has no 'img_id'.*nocaps_val"),
    ("sbu_caption", "train", {"image": "a.png", "caption": ""}, r"sbu_caption: record 1 of .*bad.json has no 'caption'"),
    ("nlvr", "val", {"images": ["a.png"], "sentence": "s", "label": "True"},
     r"nlvr: record 1 of .*bad.json: 'images' must list two image paths, got \['a.png'\]"),
    ("nlvr", "val", {"images": ["a.png", "b.png"], "sentence": "s", "label": "yes"},
     r"nlvr: record 1 of .*bad.json: label 'yes' is not \"True\" or \"False\""),
])
def test_bad_rows_name_the_file_and_the_record(tmp_path, name, split, record, message):
    good = {"aok_vqa": {"question_id": "g", "question": "q?", "image": "a.png", "choices": ["a"], "direct_answers": ["a"]},
            "gqa": {"question_id": "g", "question": "q?", "image": "a.png", "answer": "a"},
            "nocaps": {"image": "a.png", "img_id": 0},
            "sbu_caption": {"image": "a.png", "caption": "a cat"},
            "nlvr": {"images": ["a.png", "b.png"], "sentence": "s", "label": "False"}}[name]
    (tmp_path / "bad.json").write_text(json.dumps([good, record]))
    cfg = {"build_info": {"annotations": {split: {"storage": str(tmp_path / "bad.json")}},
                          "images": {"storage": str(tmp_path)}}}
    with pytest.raises(ValueError, match=message):
        build(name, cfg)
