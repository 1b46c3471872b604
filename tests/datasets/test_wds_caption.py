import json
import logging

import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from tests.datasets.conftest import build, corrupt_bytes, image_bytes

COLOURS = ["red", "green", "blue", "grey"]


def _write_shards(root, n_shards=4, per_shard=3, corrupt=("s1_0",), caption="txt"):
    """Shards root/train-{0..n-1}.tar; keys s<shard>_<i>; the listed keys hold random bytes."""
    root.mkdir(exist_ok=True)
    for s in range(n_shards):
        with wds.TarWriter(str(root / f"train-{s}.tar")) as sink:
            for i in range(per_shard):
                key = f"s{s}_{i}"
                sample = {"__key__": key, "jpg": corrupt_bytes() if key in corrupt else image_bytes(COLOURS[(s + i) % 4], "JPEG")}
                if caption == "txt":
                    sample["txt"] = f"caption {key}"
                else:
                    sample["json"] = json.dumps({"text": [f"caption {key}", f"other {key}"]}).encode()
                sink.write(sample)
    return f"{root}/train-{{0..{n_shards - 1}}}.tar"


def _cfg(pattern, split="train", **extra):
    return {"build_info": {"annotations": {split: {"storage": pattern, "num_samples": 12}}, "shuffle_buffer": 0, **extra}}


def test_dataloader_with_two_workers_reads_each_sample_once_and_counts_the_corrupt_one(tmp_path):
    train = build("wds_caption", _cfg(_write_shards(tmp_path / "shards")))["train"]
    assert len(train) == 12 and len(train.urls) == 4
    loader = DataLoader(train, batch_size=2, num_workers=2, collate_fn=train.collater)
    batches = list(loader)
    keys = [k for b in batches for k in b["image_id"]]
    assert sorted(keys) == sorted(f"s{s}_{i}" for s in range(4) for i in range(3) if (s, i) != (1, 0))
    assert sum(b["n_skipped"] for b in batches) == 1  # skipped in a worker, reported in its next batch
    b = batches[0]
    assert b["image"].shape == (2, 3, 16, 16) and b["text_input"][0] == f"caption {b['image_id'][0]}"
    assert "_skipped" not in b


def test_corrupt_sample_is_warned_about_and_counted_in_process(tmp_path, caplog):
    train = build("wds_caption", _cfg(_write_shards(tmp_path / "shards")))["train"]
    with caplog.at_level(logging.WARNING):
        items = list(train)
    assert len(items) == 11 and train.skipped == 1
    assert "s1_0.jpg" in caplog.text and "not an image" in caplog.text


def test_shards_are_split_by_node_and_reshuffled_per_epoch(tmp_path, monkeypatch):
    pattern = _write_shards(tmp_path / "shards", corrupt=())
    train = build("wds_caption", _cfg(pattern))["train"]
    seen = []
    for rank in (0, 1):  # webdataset reads the rank from torchrun's environment
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({item["image_id"] for item in train})
        assert len(train) == 6  # this rank's share of num_samples
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    order = lambda epoch: (train.set_epoch(epoch), [item["image_id"] for item in train])[1]  # noqa: E731
    assert order(0) == order(0) and order(0) != order(1) and sorted(order(0)) == sorted(order(1))


def test_json_captions_eval_items_and_ground_truth(tmp_path):
    pattern = _write_shards(tmp_path / "shards", n_shards=2, corrupt=(), caption="json")
    ds = build("wds_caption", _cfg(pattern, split="val", caption_key="json", json_caption_field="text"))
    val = ds["val"]
    items = list(val)
    assert len(items) == 6 and set(items[0]) == {"image", "image_id", "instance_id", "_skipped"}
    assert val.ground_truth()["s0_1"] == ["caption s0_1", "other s0_1"]
    batch = val.collater(items[:2])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["n_skipped"] == 0 and batch["image_id"] == ["s0_0", "s0_1"]


def test_missing_shards_and_length_are_explained(tmp_path):
    pattern = _write_shards(tmp_path / "shards", n_shards=3, corrupt=())
    with pytest.raises(FileNotFoundError, match="shard '.*train-3.tar' of split 'train' not found"):
        build("wds_caption", _cfg(pattern.replace("{0..2}", "{0..3}")))
    train = build("wds_caption", {"build_info": {"annotations": {"train": {"storage": pattern}}}})["train"]
    with pytest.raises(TypeError, match="num_samples"):
        len(train)
