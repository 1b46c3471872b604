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
from vlft.datasets.retrieval_datasets import RetrievalEvalDataset
from vlft.datasets.synthetic_lavis import write_shapes_lavis
from vlft.datasets.synthetic_shapes import scene_caption
from vlft.runners.data import collate_fn_of


def defaults(name: str) -> dict:
    """The builder's default YAML section, minus its (384 px) image processors: the
    tests use conftest's 16 px ones, and keep the default text processors."""
    path = resolve_config_file(registry.get_builder_class(name).DATASET_CONFIG_DICT["default"])
    cfg = OmegaConf.to_container(OmegaConf.load(path).datasets[name])
    cfg.pop("vis_processor")
    return cfg


@pytest.fixture
def synthetic(tmp_path):
    write_shapes_lavis(tmp_path, n_train=6, n_val=3, n_test=2)
    return {"cache_root": str(tmp_path)}


def test_default_yamls_mirror_lavis():
    for name, ann in (("coco_retrieval", "coco/annotations/coco_karpathy_{}.json"),
                      ("flickr30k", "flickr30k/annotations/{}.json")):
        cfg = defaults(name)
        assert cfg["text_processor"] == {"train": {"name": "blip_caption"}, "eval": {"name": "blip_caption"}}
        assert {s: a["storage"] for s, a in cfg["build_info"]["annotations"].items()} == {
            s: ann.format(s) for s in ("train", "val", "test")}
    assert defaults("flickr30k")["build_info"]["images"]["storage"] == "flickr30k/images/"
    assert defaults("coco_retrieval")["build_info"]["images"]["storage"] == "coco/images/"
    path = resolve_config_file(registry.get_builder_class("retrieval_custom").DATASET_CONFIG_DICT["default"])
    vis = OmegaConf.load(path).datasets.retrieval_custom.vis_processor
    assert (vis.train.name, vis.train.image_size, vis.eval.name, vis.eval.image_size) == (
        "blip_image_train", 384, "blip_image_eval", 384)


def test_coco_retrieval_train_items_are_caption_pairs_with_image_indices(synthetic):
    train = build("coco_retrieval", defaults("coco_retrieval"), run_cfg=synthetic)["train"]
    assert len(train) == 6
    item = train[4]
    assert set(item) == {"image", "text_input", "image_id", "instance_id"}
    assert (item["text_input"], item["image_id"], item["instance_id"]) == (scene_caption(4), 4, "4")
    assert item["image"].shape == (3, 16, 16)
    batch = next(iter(DataLoader(train, batch_size=6, collate_fn=collate_fn_of(train))))
    assert torch.equal(batch["image_id"], torch.arange(6))  # what the ITC loss reads


def test_coco_retrieval_eval_walks_images_and_maps_texts_both_ways(synthetic):
    ds = build("coco_retrieval", defaults("coco_retrieval"), run_cfg=synthetic)
    val, test = ds["val"], ds["test"]
    assert isinstance(val, RetrievalEvalDataset) and (len(val), len(test)) == (3, 2)
    assert val.image == ["val/000000.png", "val/000001.png", "val/000002.png"]
    assert val.img2txt == {0: [0, 1], 1: [2, 3], 2: [4, 5]}
    assert val.txt2img == {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2}
    caption = scene_caption(1_000_001)
    assert val.text[2:4] == [caption, f"a picture of {caption}"]
    item = val[1]
    assert set(item) == {"image", "index", "instance_id"}
    assert (item["index"], item["instance_id"], tuple(item["image"].shape)) == (1, "1", (3, 16, 16))
    batch = next(iter(DataLoader(val, batch_size=3, collate_fn=collate_fn_of(val))))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["index"].tolist() == [0, 1, 2]
    assert test.img2txt == {0: [0, 1], 1: [2, 3]} and len(test.text) == 4


def test_flickr30k_from_the_synthetic_root(synthetic):
    ds = build("flickr30k", defaults("flickr30k"), run_cfg=synthetic)
    assert {k: len(v) for k, v in ds.items()} == {"train": 6, "val": 3, "test": 2}
    assert [ds["train"][i]["image_id"] for i in (0, 5)] == [0, 5]
    assert ds["test"].img2txt == {0: [0, 1], 1: [2, 3]} and ds["test"][1]["index"] == 1


@pytest.fixture
def flickr_lavis(tmp_path, image_dir):
    """LAVIS's Flickr30k names and record shapes; one image listed in two records."""
    images = tmp_path / "flickr30k" / "images" / "flickr30k-images"
    images.mkdir(parents=True)
    for src, name in (("red.png", "1000092795.jpg"), ("blue.png", "10002456.jpg"), ("bad.jpg", "1000268201.jpg")):
        shutil.copy(image_dir / src, images / name)
    ann = tmp_path / "flickr30k" / "annotations"
    ann.mkdir()
    train = [{"image": "flickr30k-images/1000092795.jpg", "caption": "Two young guys.", "image_id": 0},
             {"image": "flickr30k-images/1000092795.jpg", "caption": "Two men outside!", "image_id": 0},
             {"image": "flickr30k-images/10002456.jpg", "caption": "Several men.", "image_id": 1}]
    test = [{"image": "flickr30k-images/10002456.jpg", "caption": ["Several MEN in hard hats.", "Workers."]},
            {"image": "flickr30k-images/1000268201.jpg", "caption": ["A child (in pink)."]},
            {"image": "flickr30k-images/10002456.jpg", "caption": ["Men on a building."]}]
    (ann / "train.json").write_text(json.dumps(train))
    (ann / "test.json").write_text(json.dumps(test))
    cfg = defaults("flickr30k")
    del cfg["build_info"]["annotations"]["val"]
    return cfg, {"cache_root": str(tmp_path)}


def test_flickr30k_lavis_records_group_by_image_and_clean_text(flickr_lavis, caplog):
    cfg, run_cfg = flickr_lavis
    ds = build("flickr30k", cfg, run_cfg=run_cfg)
    train, test = ds["train"], ds["test"]
    assert [train[i]["image_id"] for i in range(3)] == [0, 0, 1]
    assert train[0]["text_input"] == "two young guys"  # blip_caption: lower case, LAVIS punctuation out
    assert len(test) == 2 and test.image_ids == [10002456, 1000268201]  # ids from the file names
    assert test.text == ["several men in hard hats", "workers", "men on a building", "a child in pink"]
    assert test.img2txt == {0: [0, 1, 2], 1: [3]}
    assert test.txt2img == {0: 0, 1: 0, 2: 0, 3: 1}
    with caplog.at_level(logging.WARNING):
        assert test[1] is None  # corrupt image: the runner drops and counts it
    assert "1000268201.jpg" in caplog.text
    batch = next(iter(DataLoader(test, batch_size=2, collate_fn=collate_fn_of(test))))
    assert batch["n_skipped"] == 1 and batch["index"].tolist() == [0]


def test_retrieval_custom_csv_and_jsonl(tmp_path, image_dir):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"file": "red.png", "text": ["A red one.", "Red!"]}, {"file": "green.jpg", "text": "green"}]) + "\n")
    (tmp_path / "val.csv").write_text("file,text\nblue.png,blue a\ngrey.png,grey a\nblue.png,blue b\n"
                                      "missing.jpg,gone\n")
    ds = build("retrieval_custom", {**defaults("retrieval_custom"), "build_info": {
        "image_key": "file", "caption_key": "text", "images": {"storage": str(image_dir)},
        "annotations": {"train": {"storage": str(tmp_path / "train.jsonl")},
                        "val": {"storage": str(tmp_path / "val.csv")}}}})
    train, val = ds["train"], ds["val"]
    assert [(train[i]["text_input"], train[i]["image_id"]) for i in range(3)] == [
        ("a red one", 0), ("red", 0), ("green", 1)]
    assert val.image == ["blue.png", "grey.png", "missing.jpg"]
    assert val.text == ["blue a", "blue b", "grey a", "gone"]
    assert val.img2txt == {0: [0, 1], 1: [2], 2: [3]} and val.txt2img[1] == 0
    assert val[0]["image"].shape == (3, 16, 16) and val[2] is None


def test_from_records_without_processors_keeps_raw_text():
    ds = RetrievalEvalDataset.from_records([{"image": "a.png", "caption": ["One.", "Two"]},
                                            {"image": "b.png", "caption": "Three"}])
    assert ds.text == ["One.", "Two", "Three"] and ds.img2txt == {0: [0, 1], 1: [2]} and len(ds) == 2


def test_missing_files_name_the_builder_the_path_and_the_format(tmp_path):
    run_cfg = {"cache_root": str(tmp_path / "cache")}
    for name, expected in (("coco_retrieval", "coco/annotations/coco_karpathy_train.json"),
                           ("flickr30k", "flickr30k/annotations/train.json")):
        with pytest.raises(FileNotFoundError) as err:
            registry.get_builder_class(name)(run_cfg=run_cfg).build()  # the default YAML; nothing downloaded
        msg = str(err.value)
        assert msg.startswith(f"{name}: annotation file for split 'train' not found")
        assert str(tmp_path / "cache" / expected) in msg and '"caption"' in msg
    assert "flickr30k_{train,val,test}.json" in msg  # the flickr-specific note
    with pytest.raises(FileNotFoundError, match="^retrieval_custom: annotation file for split 'val'"):
        build("retrieval_custom", {"build_info": {"annotations": {"val": {"storage": str(tmp_path / "no.csv")}}}})
    (tmp_path / "val.csv").write_text("path,text\nred.png,x\n")
    with pytest.raises(ValueError, match=r"^retrieval_custom: record 0 .* has no 'image' \(it has: path, text\)"):
        build("retrieval_custom", {"build_info": {"annotations": {"val": {"storage": str(tmp_path / "val.csv")}}}})
