import csv
import json
import logging
import shutil

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from tests.datasets.conftest import build
from vlft.common.registry import registry
from vlft.common.utils import resolve_config_file
from vlft.datasets.synthetic_lavis import write_shapes_lavis
from vlft.datasets.vqa_datasets import VQADataset, VQAEvalDataset, answer_weights
from vlft.runners.data import collate_fn_of


def defaults(name: str) -> dict:
    """The builder's default YAML section, minus its (480 px) image processors: the
    tests use conftest's 16 px ones, and keep the default question processor."""
    path = resolve_config_file(registry.get_builder_class(name).DATASET_CONFIG_DICT["default"])
    cfg = OmegaConf.to_container(OmegaConf.load(path).datasets[name])
    cfg.pop("vis_processor")
    return cfg


@pytest.fixture
def synthetic(tmp_path):
    written = write_shapes_lavis(tmp_path, n_train=8, n_val=2, n_test=2)
    return written, {"cache_root": str(tmp_path)}


def test_default_yamls_mirror_lavis():
    for name in ("coco_vqa", "vqa_custom"):
        path = resolve_config_file(registry.get_builder_class(name).DATASET_CONFIG_DICT["default"])
        cfg = OmegaConf.load(path).datasets[name]
        assert (cfg.vis_processor.train.name, cfg.vis_processor.train.image_size) == ("blip_image_train", 480)
        assert (cfg.vis_processor.eval.name, cfg.vis_processor.eval.image_size) == ("blip_image_eval", 480)
        assert cfg.text_processor.train.name == cfg.text_processor.eval.name == "blip_question"
    info = defaults("coco_vqa")["build_info"]
    assert {s: a["storage"] for s, a in info["annotations"].items()} == {
        s: f"coco/annotations/vqa_{s}.json" for s in ("train", "val", "test")}
    assert info["answer_list"]["storage"] == "coco/annotations/answer_list.json"
    assert info["images"]["storage"] == "coco/images/"


def test_answer_weights_are_lavis_soft_targets():
    assert answer_weights(["yes", "yes", "no", "yes"]) == (["yes", "no"], [0.75, 0.25])
    assert answer_weights(["2"]) == (["2"], [1.0])


def test_coco_vqa_train_items_and_collater(synthetic):
    written, run_cfg = synthetic
    train = build("coco_vqa", defaults("coco_vqa"), run_cfg=run_cfg)["train"]
    records = json.loads(written["vqa_train"].read_text())
    assert isinstance(train, VQADataset) and len(train) == 32
    dissent = next(i for i, r in enumerate(records) if len(set(r["answer"])) > 1)
    item, record = train[dissent], records[dissent]
    assert set(item) == {"image", "text_input", "answers", "weights", "question_id", "instance_id"}
    majority = max(set(record["answer"]), key=record["answer"].count)
    assert sorted(item["weights"]) == pytest.approx([0.1, 0.9])
    assert dict(zip(item["answers"], item["weights"]))[majority] == pytest.approx(0.9)
    assert (item["question_id"], item["instance_id"]) == (record["question_id"], str(dissent))
    assert train[0]["text_input"] == "what colour is the left shape?"  # blip_question keeps "?"

    batch = next(iter(DataLoader(train, batch_size=4, collate_fn=collate_fn_of(train))))
    items = [train[i] for i in range(4)]  # no random image ops in these fields: the same as the batch's
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["text_input"] == [x["text_input"] for x in items]
    assert batch["answers"] == [a for x in items for a in x["answers"]]
    assert batch["weights"].dtype == torch.float32
    assert batch["weights"].tolist() == pytest.approx([w for x in items for w in x["weights"]])
    assert batch["n_answers"].dtype == torch.long and batch["n_answers"].tolist() == [len(x["answers"]) for x in items]
    assert int(batch["n_answers"].sum()) == len(batch["answers"])
    assert batch["question_id"] == [r["question_id"] for r in records[:4]] and batch["n_skipped"] == 0


def test_coco_vqa_eval_ground_truth_types_and_answer_list(synthetic):
    written, run_cfg = synthetic
    ds = build("coco_vqa", defaults("coco_vqa"), run_cfg=run_cfg)
    val = ds["val"]
    records = json.loads(written["vqa_val"].read_text())
    assert isinstance(val, VQAEvalDataset) and len(val) == 8 and len(ds["test"]) == 8
    item = val[2]
    assert set(item) == {"image", "text_input", "question_id", "instance_id"}
    assert (item["question_id"], item["instance_id"], item["image"].shape) == (10_000_002, "2", (3, 16, 16))
    assert val.ground_truth() == {r["question_id"]: r["answer"] for r in records}
    assert set(val.answer_types().values()) == {"other", "yes/no"} and len(val.answer_types()) == 8
    assert val.answer_list == json.loads(written["answer_list"].read_text()) and "yes" in val.answer_list
    batch = next(iter(DataLoader(val, batch_size=3, collate_fn=collate_fn_of(val))))
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["question_id"] == [10_000_000, 10_000_001, 10_000_002]  # plain ints, JSON-ready
    assert batch["text_input"][1] == "what shape is on the right?"


def test_lavis_storage_lists_with_answer_list_and_official_annotations(tmp_path, image_dir):
    coco = tmp_path / "coco"
    (coco / "images" / "val2014").mkdir(parents=True)
    shutil.copy(image_dir / "red.png", coco / "images" / "val2014" / "COCO_val2014_000000000001.jpg")
    ann = coco / "annotations"
    ann.mkdir()
    image = "val2014/COCO_val2014_000000000001.jpg"
    (ann / "vqa_val_eval.json").write_text(json.dumps([
        {"question_id": 11, "question": "What colour?", "image": image},
        {"question_id": 12, "question": "Is it red?", "image": image, "answer": ["yes"] * 10}]))
    (ann / "answer_list.json").write_text(json.dumps(["red", "yes", "no"]))
    (ann / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": []}))
    (ann / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": [
        {"question_id": 11, "answer_type": "other", "answers": [{"answer": "red"}, {"answer": "crimson"}]},
        {"question_id": 12, "answer_type": "yes/no", "answers": [{"answer": "yes"}]}]}))
    files = ("vqa_val_eval.json", "answer_list.json", "v2_OpenEnded_mscoco_val2014_questions.json",
             "v2_mscoco_val2014_annotations.json")  # LAVIS's val storage list
    storage = [str(ann / f) for f in files]
    cfg = defaults("coco_vqa")
    cfg["build_info"].update(annotations={"val": {"storage": storage}}, answer_list=None)
    val = build("coco_vqa", cfg, run_cfg={"cache_root": str(tmp_path)})["val"]
    assert val.answer_list == ["red", "yes", "no"]
    assert val.ground_truth() == {11: ["red", "crimson"], 12: ["yes"] * 10}
    assert val.answer_types() == {11: "other", 12: "yes/no"}
    assert val[0]["text_input"] == "what colour?"


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_vqa_custom_csv_jsonl_separators_and_a_test_split_without_answers(tmp_path, image_dir, caplog):
    _write_csv(tmp_path / "train.csv", ["image", "question", "answer", "answer_type"], [
        ["red.png", "What Colour?", "red|red|red|maroon", "other"],
        ["green.jpg", "Is it green?", json.dumps(["yes", "yes", "no"]), "yes/no"],
        ["bad.jpg", "Corrupt?", "yes", ""]])
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file": "blue.png", "q": "Which colour?", "answers": ["blue", "navy"], "qid": "v1"},
        {"file": "grey.png", "q": "Which shade?", "answers": "grey;gray", "qid": "v2"}]) + "\n")
    _write_csv(tmp_path / "test.csv", ["image", "question"], [["red.png", "Anything?"], ["blue.png", "More?"]])
    cfg = defaults("vqa_custom")
    cfg["build_info"].update(images={"storage": str(image_dir)}, annotations={
        "train": {"storage": str(tmp_path / "train.csv")},
        "val": {"storage": str(tmp_path / "val.jsonl"), "image_key": "file", "question_key": "q",
                "answer_key": "answers", "question_id_key": "qid", "answer_separator": ";"},
        "test": {"storage": str(tmp_path / "test.csv")}})
    ds = build("vqa_custom", cfg)
    train, val, test = ds["train"], ds["val"], ds["test"]
    assert (train[0]["answers"], train[0]["weights"]) == (["red", "maroon"], [0.75, 0.25])
    assert train[1]["answers"] == ["yes", "no"] and train[1]["weights"] == pytest.approx([2 / 3, 1 / 3])
    assert [train[i]["question_id"] for i in (0, 1)] == [0, 1]  # no question_id_key: the running index
    with caplog.at_level(logging.WARNING):
        assert train[2] is None
    assert "bad.jpg" in caplog.text
    batch = train.collater([None, train[0], None, train[1]])  # direct calls tolerate None too
    assert batch["n_answers"].tolist() == [2, 2] and batch["answers"] == ["red", "maroon", "yes", "no"]
    assert train.collater([None]) == {}
    batch = next(iter(DataLoader(train, batch_size=3, collate_fn=collate_fn_of(train))))
    assert batch["n_skipped"] == 1 and batch["image"].shape == (2, 3, 16, 16)

    assert val.ground_truth() == {"v1": ["blue", "navy"], "v2": ["grey", "gray"]}
    assert val[1]["text_input"] == "which shade?" and val.answer_list is None and val.answer_types() == {}
    assert test.ground_truth() == {0: [], 1: []} and test[1]["question_id"] == 1


def test_errors_a_user_can_cause(tmp_path, synthetic):
    written, run_cfg = synthetic
    empty = {"cache_root": str(tmp_path / "empty")}
    with pytest.raises(FileNotFoundError) as err:
        registry.get_builder_class("coco_vqa")(run_cfg=empty).build()  # the default YAML; nothing downloaded
    msg = str(err.value)
    assert msg.startswith("coco_vqa: annotation file for split 'train' not found")
    assert str(tmp_path / "empty" / "coco" / "annotations" / "vqa_train.json") in msg and "VQAv2" in msg

    written["answer_list"].unlink()
    with pytest.raises(FileNotFoundError, match="coco_vqa: answer list .*answer_list.json.*answer_list: null"):
        build("coco_vqa", defaults("coco_vqa"), run_cfg=run_cfg)

    (tmp_path / "train.json").write_text(json.dumps([{"image": "red.png", "question": "q?"}]))
    with pytest.raises(ValueError, match="record 0 \\(question_id 0\\) has no answers"):
        build("vqa_custom", {"build_info": {"annotations": {"train": {"storage": str(tmp_path / "train.json")}}}})
    (tmp_path / "val.json").write_text(json.dumps([{"image": "a.png", "question": "q", "id": 5}] * 2))
    with pytest.raises(ValueError, match="question_id 5 is used by records 0 and 1"):
        build("vqa_custom", {"build_info": {"question_id_key": "id",
                                            "annotations": {"val": {"storage": str(tmp_path / "val.json")}}}})
    (tmp_path / "val.csv").write_text("image,text\na.png,q\n")
    with pytest.raises(ValueError, match=r"^vqa_custom: record 0 .* has no 'question' \(it has: image, text\)"):
        build("vqa_custom", {"build_info": {"annotations": {"val": {"storage": str(tmp_path / "val.csv")}}}})
    (tmp_path / "val.txt").write_text("x")
    with pytest.raises(ValueError, match="^vqa_custom: cannot tell the format"):
        build("vqa_custom", {"build_info": {"annotations": {"val": {"storage": str(tmp_path / "val.txt")}}}})


def test_from_records_in_memory():
    ds = VQAEvalDataset.from_records([{"image": "a.png", "question": "Q?", "answer": "yes", "question_id": 3}],
                                     answer_list=["yes", "no"])
    assert ds.ground_truth() == {3: ["yes"]} and ds.answer_list == ["yes", "no"] and len(ds) == 1
