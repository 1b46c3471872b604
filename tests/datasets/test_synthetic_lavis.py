import json
from collections import Counter

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.datasets.conftest import build
from vlft.common.registry import registry
from vlft.common.utils import resolve_config_file, resolve_data_path
from vlft.datasets.synthetic_lavis import main, write_shapes_lavis
from vlft.datasets.synthetic_shapes import COLOURS, SHAPES, make_scene, scene_caption, scene_questions

LAVIS_BUILDERS = ("coco_caption", "coco_retrieval", "coco_vqa", "flickr30k", "nocaps", "ok_vqa", "aok_vqa", "gqa",
                  "vg_vqa", "vg_caption", "conceptual_caption_3m", "conceptual_caption_12m", "sbu_caption", "nlvr")
BUILDER_TYPES = [(name, t) for name in LAVIS_BUILDERS for t in registry.get_builder_class(name).DATASET_CONFIG_DICT]


def default_build_info(name: str, type: str = "default") -> dict:
    path = resolve_config_file(registry.get_builder_class(name).DATASET_CONFIG_DICT[type])
    return OmegaConf.to_container(OmegaConf.load(path).datasets[name].build_info)


def test_layout_counts_and_formats(tmp_path):
    written = write_shapes_lavis(tmp_path, n_train=5, n_val=3, n_test=2)
    assert sorted(p.name for p in (tmp_path / "coco" / "images" / "val").iterdir()) == [
        "000000.png", "000001.png", "000002.png"]
    assert len(list((tmp_path / "flickr30k" / "images").rglob("*.png"))) == 10
    load = lambda key: json.loads(written[key].read_text())  # noqa: E731
    train, val = load("coco_karpathy_train"), load("coco_karpathy_val")
    assert len(train) == 5 and train[0] == {"image": "train/000000.png", "caption": scene_caption(0),
                                            "image_id": "shapes_0"}
    caption = scene_caption(1_000_001)
    assert val[1] == {"image": "val/000001.png", "caption": [caption, f"a picture of {caption}"]}
    assert load("flickr30k_train")[4] == {"image": "train/000004.png", "caption": scene_caption(4), "image_id": 4}
    assert load("flickr30k_test") == load("coco_karpathy_test")

    vqa = load("vqa_test")
    assert len(vqa) == 2 * 4 and len({q["question_id"] for q in vqa}) == 8
    first = vqa[0]
    assert set(first) == {"question_id", "question", "answer", "image", "answer_type", "question_type"}
    assert (first["question_id"], first["image"], first["answer_type"]) == (20_000_000, "test/000000.png", "other")
    answer_list = load("answer_list")
    for split in ("train", "val", "test"):
        for q in load(f"vqa_{split}"):
            scene = {"train": 0, "val": 1_000_000, "test": 2_000_000}[split] + int(q["image"][-10:-4])
            truth = dict(scene_questions(scene))[q["question"]]
            votes = Counter(q["answer"])
            assert len(q["answer"]) == 10 and votes[truth] >= 9  # the majority is the true answer
            assert set(q["answer"]) <= set(answer_list)
    assert answer_list == sorted(answer_list) and {"yes", "no", "red", "circle"} <= set(answer_list)


def test_some_annotators_dissent_with_an_answer_of_the_same_kind(tmp_path):
    written = write_shapes_lavis(tmp_path)  # the defaults: 32 / 8 / 8 scenes
    questions = json.loads(written["vqa_train"].read_text())
    dissenting = [q for q in questions if len(set(q["answer"])) > 1]
    assert len(questions) == 128 and 10 < len(dissenting) < 70  # about 3 in 10
    kinds = {"what colour is the": set(COLOURS), "what shape is": set(SHAPES),
             "is there a": {"yes", "no"}, "is the": {"yes", "no"}}
    for q in dissenting:
        assert sorted(Counter(q["answer"]).values()) == [1, 9]
        assert set(q["answer"]) <= kinds[q["question_type"]]


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_images_are_the_synthetic_scenes_and_writing_is_deterministic(tmp_path):
    a = write_shapes_lavis(tmp_path / "a", n_train=2, n_val=2, n_test=1, image_size=32, seed=3)
    b = write_shapes_lavis(tmp_path / "b", n_train=2, n_val=2, n_test=1, image_size=32, seed=3)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    # every builder: 5 COCO + 5 Flickr + 3 NoCaps + 5 GQA + 2 VG + 2 x 3 caption-pair images, 5 NLVR2 pairs
    # of 2; 10 COCO / Flickr, 20 VQA-variant (3 VQAv2 eval, 5 OK-VQA, 5 A-OKVQA, 6 GQA, 1 VG), 3 NoCaps,
    # 4 caption-pair and 3 NLVR2 annotation files
    assert files_a == files_b and len(files_a) == (5 + 5 + 3 + 5 + 2 + 6 + 10) + (10 + 20 + 3 + 4 + 3)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    coco_only = write_shapes_lavis(tmp_path / "c", n_train=2, n_val=2, n_test=1, image_size=32, seed=3,
                                   all_builders=False)
    assert len(_files(tmp_path / "c")) == 2 * 5 + 10 and "nocaps_val" not in coco_only  # images twice, 10 JSONs
    drawn = np.asarray(Image.open(a["coco_images"] / "val" / "000001.png"))
    assert drawn.shape == (32, 32, 3)
    assert np.array_equal(drawn, np.asarray(make_scene(1_000_001, seed=3, image_size=32)["image"]))


@pytest.fixture(scope="module")
def one_of_each(tmp_path_factory):
    root = tmp_path_factory.mktemp("lavis")
    write_shapes_lavis(root, n_train=1, n_val=1, n_test=1, image_size=32)
    return root


@pytest.mark.parametrize("name,type", BUILDER_TYPES, ids=[f"{n}-{t}" for n, t in BUILDER_TYPES])
def test_every_default_yaml_path_of_every_lavis_builder_exists(one_of_each, name, type):
    info = default_build_info(name, type)
    paths = [p for a in info["annotations"].values()
             for p in ([a["storage"]] if isinstance(a["storage"], str) else a["storage"])]
    paths.append(info["images"]["storage"])
    if info.get("answer_list"):
        paths.append(info["answer_list"]["storage"])
    missing = [p for p in paths if not resolve_data_path(p, {"cache_root": str(one_of_each)}).exists()]
    assert not missing and len(paths) >= 2


def test_coco_caption_builds_from_the_synthetic_root(tmp_path):
    write_shapes_lavis(tmp_path, n_train=3, n_val=2, n_test=1)
    ds = build("coco_caption", {"build_info": default_build_info("coco_caption")},
               run_cfg={"cache_root": str(tmp_path)})
    assert {k: len(v) for k, v in ds.items()} == {"train": 3, "val": 2, "test": 1}
    assert ds["train"][2]["text_input"] == scene_caption(2) and ds["train"][2]["image"].shape == (3, 16, 16)
    caption = scene_caption(1_000_001)
    assert ds["val"].ground_truth()[1] == [caption, f"a picture of {caption}"]


def test_cli_writes_and_says_what(tmp_path, capsys):
    written = main(["--root", str(tmp_path), "--n-train", "2", "--n-val", "1", "--n-test", "0"])
    out = capsys.readouterr().out
    assert "wrote 2 train / 1 val / 0 test scenes" in out
    assert str(written["vqa_val"]) in out and "run.cache_root=" in out
    assert json.loads(written["coco_karpathy_test"].read_text()) == []
    with pytest.raises(ValueError, match="n_val must be >= 0"):
        write_shapes_lavis(tmp_path, n_val=-1)
