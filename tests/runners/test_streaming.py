"""The runner trains and evaluates on a streaming (webdataset) source: tar shards of
synthetic-shape images and captions, a tiny BLIP, the captioning task."""
import io
import json

import webdataset as wds

from tests.helpers import REPO, only_run_dir, read_log, run_script
from vlft.datasets.synthetic_shapes import make_scene


def write_shards(folder, prefix, n, per_shard, offset):
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(n // per_shard):
        with wds.TarWriter(str(folder / f"{prefix}-{shard:03d}.tar")) as sink:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                scene = make_scene(offset + i, image_size=32)
                buf = io.BytesIO()
                scene["image"].save(buf, format="PNG")
                sink.write({"__key__": f"{prefix}{i:05d}", "png": buf.getvalue(), "txt": scene["caption"]})
    return str(folder / f"{prefix}-{{000..{n // per_shard - 1:03d}}}.tar")


def test_captioning_on_webdataset_shards(tmp_path):
    train = write_shards(tmp_path / "shards", "train", 64, 16, 0)
    val = write_shards(tmp_path / "shards", "val", 16, 8, 10_000)
    project = tmp_path / "wds.yaml"
    project.write_text(json.dumps({
        "model": {"arch": "blip_caption", "model_type": "tiny"},
        "datasets": {"wds_caption": {
            "vis_processor": {"train": {"name": "blip_image_eval", "image_size": 32}, "eval": {"name": "blip_image_eval", "image_size": 32}},
            "text_processor": {"train": {"name": "blip_caption", "prompt": "a picture of "}, "eval": {"name": "blip_caption"}},
            "build_info": {"image_key": "png", "caption_key": "txt", "annotations": {
                "train": {"storage": train, "num_samples": 64}, "val": {"storage": val, "num_samples": 16}}}}},
        "run": {"task": "captioning", "init_lr": 1e-3, "max_epoch": 2, "batch_size_train": 8, "batch_size_eval": 8,
                "num_workers": 2, "device": "cpu", "valid_splits": ["val"], "log_freq": 4, "plot_curves": False,
                "max_len": 12, "min_len": 3, "num_beams": 1, "output_dir": str(tmp_path / "out")},
    }))
    run_script(["train.py", "--cfg-path", str(project)])
    log = read_log(only_run_dir(tmp_path / "out"))
    assert [r["step"] for r in log if r["kind"] == "train"][-1] == 16  # 2 epochs x 64 / 8
    val = [r for r in log if r["kind"] == "eval/wds_caption/val"]
    assert len(val) == 2 and all("CIDEr" in r for r in val)
