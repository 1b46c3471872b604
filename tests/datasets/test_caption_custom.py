import csv
import json
import logging

import pytest

from tests.datasets.conftest import build


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_jsonl_with_configured_column_names_and_an_image_root(tmp_path, image_dir):
    lines = [{"file": "red.png", "text": "red one", "uid": "r"}, {"file": "green.jpg", "text": ["green one", "green two"], "uid": "g"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = build("caption_custom", {"build_info": {
        "image_key": "file", "caption_key": "text", "image_id_key": "uid",
        "images": {"storage": str(image_dir)},
        "annotations": {"train": {"storage": str(tmp_path / "train.jsonl")}}}})
    train = ds["train"]
    assert len(train) == 3  # one item per caption: a list cell gives several pairs
    assert [train[i]["text_input"] for i in range(3)] == ["red one", "green one", "green two"]
    assert [train[i]["image_id"] for i in range(3)] == [0, 1, 1]
    assert train.img_ids == {"r": 0, "g": 1}
    assert train[1]["image"].shape == (3, 16, 16)


def test_csv_val_groups_captions_per_image_and_derives_ids_from_paths(tmp_path, image_dir):
    # no images.storage: paths are relative to the annotation file's folder
    _write_csv(tmp_path / "val.csv", ["image", "caption"], [
        ["images/blue.png", "blue a"], ["images/red.png", "red a"], ["images/blue.png", "blue b"],
        ["images/grey.png", json.dumps(["grey a", "grey b"])],
    ])
    (tmp_path / "test.json").write_text(json.dumps([{"image": "images/red.png", "caption": "only red"}]))
    ds = build("caption_custom", {"build_info": {"annotations": {
        "val": {"storage": str(tmp_path / "val.csv")}, "test": {"storage": str(tmp_path / "test.json")}}}})
    val = ds["val"]
    assert len(val) == 3 and len(ds["test"]) == 1
    assert val.ground_truth() == {"images/blue.png": ["blue a", "blue b"], "images/red.png": ["red a"],
                                  "images/grey.png": ["grey a", "grey b"]}
    item = val[0]
    assert set(item) == {"image", "image_id", "instance_id"}
    assert (item["image_id"], item["instance_id"], tuple(item["image"].shape)) == ("images/blue.png", "0", (3, 16, 16))


def test_several_files_per_split_and_tsv(tmp_path, image_dir):
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [{"image": "red.png", "caption": "r"}]}))
    (tmp_path / "b.tsv").write_text("image\tcaption\nblue.png\tb\n")
    ds = build("caption_custom", {"build_info": {"images": {"storage": str(image_dir)}, "annotations": {
        "train": {"storage": [str(tmp_path / "a.json"), str(tmp_path / "b.tsv")]}}}})
    assert [ds["train"][i]["text_input"] for i in range(2)] == ["r", "b"]


def test_wrong_column_name_is_reported_with_the_columns_present(tmp_path):
    _write_csv(tmp_path / "train.csv", ["path", "text"], [["red.png", "x"]])
    with pytest.raises(ValueError, match=r"no 'image' \(it has: path, text\)"):
        build("caption_custom", {"build_info": {"annotations": {"train": {"storage": str(tmp_path / "train.csv")}}}})
    with pytest.raises(FileNotFoundError, match="annotation file for split 'train' not found"):
        build("caption_custom", {"build_info": {"annotations": {"train": {"storage": str(tmp_path / "nope.jsonl")}}}})


def test_corrupt_and_missing_images_are_none_with_a_warning(tmp_path, image_dir, caplog):
    rows = [["bad.jpg", "corrupt"], ["missing.jpg", "gone"], ["red.png", "fine"]]
    _write_csv(tmp_path / "val.csv", ["image", "caption"], rows)
    ds = build("caption_custom", {"build_info": {"images": {"storage": str(image_dir)},
                                                 "annotations": {"val": {"storage": str(tmp_path / "val.csv")}}}})
    with caplog.at_level(logging.WARNING):
        items = [ds["val"][i] for i in range(3)]
    assert items[0] is None and items[1] is None and items[2]["image_id"] == "red.png"
    assert str(image_dir / "bad.jpg") in caplog.text and str(image_dir / "missing.jpg") in caplog.text
    assert ds["val"].ground_truth()["bad.jpg"] == ["corrupt"]  # references stay: scoring sees the gap
