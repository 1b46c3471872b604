import pytest
from PIL import Image

from tests.datasets.conftest import image_bytes
from vlft.datasets.caption_datasets import CaptionDataset, CaptionEvalDataset


def _records():
    return [
        {"image": Image.new("RGB", (4, 4), (255, 0, 0)), "caption": ["red", "very red"]},
        {"image": image_bytes("blue"), "caption": "blue"},
        {"image": image_bytes("green"), "caption": "green", "image_id": "g"},
        {"image": image_bytes("green"), "caption": "also green", "image_id": "g"},
    ]


def test_train_pairs_cover_every_caption_of_in_memory_records():
    train = CaptionDataset.from_records(_records())
    items = [train[i] for i in range(len(train))]
    assert [it["text_input"] for it in items] == ["red", "very red", "blue", "green", "also green"]
    assert [it["image_id"] for it in items] == [0, 0, 1, 2, 2]  # no id: the record's position stands in
    assert items[2]["image"].size == (12, 10) and items[2]["image"].mode == "RGB"  # no processor: PIL


def test_eval_groups_records_that_share_an_image_id():
    val = CaptionEvalDataset.from_records(_records(), split="val")
    assert len(val) == 3
    assert val.ground_truth() == {0: ["red", "very red"], 1: ["blue"], "g": ["green", "also green"]}
    assert [val[i]["image_id"] for i in range(3)] == [0, 1, "g"]


def test_a_bare_dataset_class_says_how_to_get_a_source():
    with pytest.raises(NotImplementedError, match="from_records"):
        CaptionDataset(split="train", info={}, build_info={})


@pytest.mark.parametrize("name", ["coco_caption", "caption_custom", "hf_caption", "wds_caption"])
def test_default_yaml_is_found_by_the_config_layering(name):
    from vlft.common.config import dataset_defaults

    section = dataset_defaults(name, None)
    assert section.vis_processor.train.name == "blip_image_train" and section.vis_processor.train.image_size == 384
    assert section.vis_processor.eval.name == "blip_image_eval" and section.vis_processor.eval.image_size == 384
    assert section.text_processor.train.name == section.text_processor.eval.name == "blip_caption"
