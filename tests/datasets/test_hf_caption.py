import json
import logging

import datasets
import pytest

from tests.datasets.conftest import build, corrupt_bytes, image_bytes
from vlft.datasets.hf_source import HFImageRef

COLOURS = ["red", "green", "blue", "grey"]


@pytest.fixture
def medtrinity_like(tmp_path):
    """A saved dataset with MedTrinity-25M's columns (image, id, caption) and one split;
    row 3 holds a corrupt image."""
    n = 10
    images = [{"bytes": image_bytes(COLOURS[i % 4]), "path": None} for i in range(n)]
    images[3] = {"bytes": corrupt_bytes(), "path": None}
    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("string"),
                                  "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "id": [f"m{i}" for i in range(n)],
                                     "caption": [f"scan {i}" for i in range(n)]}, features=features)
    path = tmp_path / "medtrinity_demo"
    datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    return path


def _cfg(path, **extra):
    return {"build_info": {"path": str(path), "id_column": "id",
                           "split_ratios": {"train": 0.7, "val": 0.2, "test": 0.1}, "split_seed": 42,
                           "annotations": {"train": {}, "val": {}, "test": {}}, **extra}}


def test_split_by_ratio_is_a_seeded_partition(medtrinity_like):
    ds = build("hf_caption", _cfg(medtrinity_like))
    assert {k: len(v) for k, v in ds.items()} == {"train": 7, "val": 2, "test": 1}
    ids = {k: list(v.img_ids) if k == "train" else list(v.ground_truth()) for k, v in ds.items()}
    assert sorted(sum(ids.values(), []), key=lambda s: int(s[1:])) == [f"m{i}" for i in range(10)]
    again = build("hf_caption", _cfg(medtrinity_like))
    assert list(again["train"].img_ids) == ids["train"] and list(again["val"].ground_truth()) == ids["val"]
    other = build("hf_caption", {"build_info": {**_cfg(medtrinity_like)["build_info"], "split_seed": 7}})
    assert list(other["val"].ground_truth()) != ids["val"]


def test_items_ground_truth_and_lazy_images(medtrinity_like):
    ds = build("hf_caption", _cfg(medtrinity_like))
    train, val = ds["train"], ds["val"]
    assert isinstance(train.records[0]["image"], HFImageRef)  # nothing decoded up front
    good = next(train[i] for i in range(len(train)) if train[i] is not None)
    assert set(good) == {"image", "text_input", "image_id", "instance_id"}
    assert good["image"].shape == (3, 16, 16) and good["text_input"].startswith("scan ")
    item = val[0]
    gt = val.ground_truth()
    assert item["image_id"] in gt and gt[item["image_id"]] == [f"scan {item['image_id'][1:]}"]


def test_corrupt_row_is_none_with_a_warning_naming_the_row(medtrinity_like, caplog):
    ds = build("hf_caption", {"build_info": {"path": str(medtrinity_like), "id_column": "id",
                                             "annotations": {"train": {}}}})  # no ratios: the whole 'train' split
    train = ds["train"]
    assert len(train) == 10
    with caplog.at_level(logging.WARNING):
        assert train[3] is None
    assert "row 3 of" in caplog.text and "not an image" in caplog.text
    assert train[4]["image_id"] == 4


def test_imagefolder_with_configured_columns(tmp_path, image_dir):
    meta = [{"file_name": n, "text": f"a {n.split('.')[0]} square", "key": n} for n in ("red.png", "green.jpg", "blue.png")]
    (image_dir / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))
    (image_dir / "bad.jpg").unlink()  # imagefolder lists files by extension; this test is about columns
    ds = build("hf_caption", {"build_info": {
        "path": "imagefolder", "data_dir": str(image_dir), "cache_dir": str(tmp_path / "hf_cache"),
        "caption_column": "text", "id_column": "key", "annotations": {"val": {"split": "train"}}}})
    val = ds["val"]
    gt = val.ground_truth()
    assert set(gt) == {"red.png", "green.jpg", "blue.png"} and gt["green.jpg"] == ["a green square"]
    assert val[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="no column 'caption'; its columns are .*text"):
        build("hf_caption", {"build_info": {"path": "imagefolder", "data_dir": str(image_dir),
                                            "cache_dir": str(tmp_path / "hf_cache"), "annotations": {"train": {}}}})


def test_hub_ids_reach_load_dataset_and_remote_code_only_on_request(monkeypatch, medtrinity_like):
    calls = []
    saved = datasets.load_from_disk(str(medtrinity_like))

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return saved

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    base = {"path": "UCSC-VLAA/MedTrinity-25M", "name": "25M_demo", "id_column": "id", "annotations": {"train": {}}}
    assert len(build("hf_caption", {"build_info": base})["train"]) == 10
    assert calls[-1] == ("UCSC-VLAA/MedTrinity-25M", {"name": "25M_demo"})
    build("hf_caption", {"build_info": {**base, "trust_remote_code": True}})
    assert calls[-1][1]["trust_remote_code"] is True
    with pytest.raises(ValueError, match="has no split 'val' .*split_ratios"):
        build("hf_caption", {"build_info": {**base, "annotations": {"val": {}}}})
