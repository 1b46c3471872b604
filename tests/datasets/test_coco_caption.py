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
from vlft.datasets.caption_sources import coco_image_id
from vlft.runners.data import collate_fn_of


@pytest.fixture
def coco(tmp_path, image_dir):
    """A LAVIS-layout COCO folder: images/val2014/COCO_val2014_<id>.<ext> + Karpathy JSONs."""
    images = tmp_path / "coco" / "images"
    (images / "val2014").mkdir(parents=True)
    names = {}
    for i, src in enumerate(["red.png", "green.jpg", "blue.png", "grey.png", "bad.jpg"], start=1):
        name = f"val2014/COCO_val2014_{i:012d}{src[src.index('.'):]}"
        shutil.copy(image_dir / src, images / name)
        names[src] = name
    ann = tmp_path / "coco" / "annotations"
    ann.mkdir()
    train = [
        {"image": names["red.png"], "caption": "a red square", "image_id": "coco_1"},
        {"image": names["red.png"], "caption": "something red", "image_id": "coco_1"},
        {"image": names["green.jpg"], "caption": "a green square", "image_id": "coco_2"},
        {"image": names["bad.jpg"], "caption": "a corrupt file", "image_id": "coco_5"},
        {"image": "val2014/COCO_val2014_000000000009.jpg", "caption": "a missing file", "image_id": "coco_9"},
    ]
    val = [{"image": names["blue.png"], "caption": ["a blue square", "blue"]},
           {"image": names["grey.png"], "caption": ["a grey square"]}]
    test = [{"image": names["green.jpg"], "caption": ["green", "a green box", "green!"]}]
    for split, data in (("train", train), ("val", val), ("test", test)):
        (ann / f"coco_karpathy_{split}.json").write_text(json.dumps(data))
    return tmp_path


def _cfg(root):
    return {"build_info": {
        "annotations": {s: {"storage": str(root / "coco" / "annotations" / f"coco_karpathy_{s}.json")}
                        for s in ("train", "val", "test")},
        "images": {"storage": str(root / "coco" / "images")}}}


def test_train_items_are_image_caption_pairs(coco):
    ds = build("coco_caption", _cfg(coco))
    train = ds["train"]
    assert {k: len(v) for k, v in ds.items()} == {"train": 5, "val": 2, "test": 1}
    first, second, third = train[0], train[1], train[2]
    assert set(first) == {"image", "text_input", "image_id", "instance_id"}
    assert first["image"].shape == (3, 16, 16) and first["image"].dtype == torch.float32
    assert (first["text_input"], second["text_input"]) == ("a red square", "something red")
    # LAVIS: the train image_id is the image's contiguous index, shared by its captions
    assert (first["image_id"], second["image_id"], third["image_id"]) == (0, 0, 1)
    assert train.img_ids == {"coco_1": 0, "coco_2": 1, "coco_5": 2, "coco_9": 3}
    assert [train[i]["instance_id"] for i in (0, 2)] == ["0", "2"]


def test_eval_items_carry_the_coco_id_and_all_references(coco):
    ds = build("coco_caption", _cfg(coco))
    val, test = ds["val"], ds["test"]
    item = val[0]
    assert set(item) == {"image", "image_id", "instance_id"} and item["image"].shape == (3, 16, 16)
    assert item["image_id"] == 3  # from COCO_val2014_000000000003.png, as LAVIS derives it
    assert val.ground_truth() == {3: ["a blue square", "blue"], 4: ["a grey square"]}
    assert test.ground_truth() == {2: ["green", "a green box", "green!"]}
    assert coco_image_id("val2014/COCO_val2014_000000391895.jpg") == 391895
    assert coco_image_id("my_pictures/cat.jpg") == "cat"


def test_corrupt_and_missing_images_are_none_and_counted_by_the_runner_collate(coco, caplog):
    train = build("coco_caption", _cfg(coco))["train"]
    with caplog.at_level(logging.WARNING):
        assert train[3] is None and train[4] is None
    text = caplog.text
    assert "COCO_val2014_000000000005.jpg" in text and "not an image" in text
    assert "COCO_val2014_000000000009.jpg" in text and "missing file" in text
    batches = list(DataLoader(train, batch_size=5, collate_fn=collate_fn_of(train)))
    assert batches[0]["n_skipped"] == 2 and batches[0]["image"].shape == (3, 3, 16, 16)


def test_default_yaml_mirrors_lavis_and_missing_files_say_where_and_what(tmp_path):
    builder_cls = registry.get_builder_class("coco_caption")
    cfg = OmegaConf.load(resolve_config_file(builder_cls.DATASET_CONFIG_DICT["default"])).datasets.coco_caption
    assert cfg.vis_processor.train.name == "blip_image_train" and cfg.vis_processor.eval.image_size == 384
    assert cfg.text_processor.train.name == "blip_caption"
    assert cfg.build_info.annotations.val.storage.endswith("coco_karpathy_val.json")
    builder = builder_cls(run_cfg={"cache_root": str(tmp_path / "cache")})  # cfg=None: the default YAML
    with pytest.raises(FileNotFoundError) as err:
        builder.build()  # nothing is downloaded
    msg = str(err.value)
    assert str(tmp_path / "cache" / "coco" / "annotations" / "coco_karpathy_train.json") in msg
    assert "Karpathy" in msg and '"caption"' in msg


def test_missing_image_root_is_an_error(coco):
    cfg = _cfg(coco)
    cfg["build_info"]["images"]["storage"] = str(coco / "nowhere")
    with pytest.raises(FileNotFoundError, match="images.storage='.*nowhere'"):
        build("coco_caption", cfg)
