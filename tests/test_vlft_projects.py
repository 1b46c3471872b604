"""vlft's own projects that no family test runs (the BLIP fine-tuning recipes on your own
data, the classification demo) run a few steps in-process on the tiny types, on synthetic
data the test writes where each project looks for it (under ``run.cache_root``), with only
sizes and paths overridden."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from tests.helpers import REPO, only_run_dir, read_log, run_in_process
from vlft.datasets.synthetic_shapes import make_scene, scene_caption

PROJECTS = ["blip/train/caption_fashion_unfreeze.yaml", "blip/train/caption_medtrinity_lora.yaml",
            "demo/shapes_classify.yaml"]
SPLITS = {"train": (0, 4), "val": (1_000_000, 2), "test": (2_000_000, 2)}  # (seed offset, samples)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """``fashion/{train,val,test}.jsonl`` + ``fashion/images/`` (caption_custom) and a saved
    dataset with MedTrinity-25M's columns at its hub id's path (hf_caption)."""
    import datasets

    root = tmp_path_factory.mktemp("vlft_projects")
    (root / "fashion" / "images").mkdir(parents=True)
    for split, (offset, n) in SPLITS.items():
        rows = []
        for i in range(n):
            make_scene(offset + i)["image"].save(root / "fashion" / "images" / f"{split}_{i}.png")
            rows.append({"image": f"{split}_{i}.png", "caption": scene_caption(offset + i)})
        (root / "fashion" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = 10  # one source split, partitioned 90/10 by the project's split_ratios
    scan = datasets.Dataset.from_dict({"image": [make_scene(i)["image"] for i in range(n)],
                                       "id": [f"m{i}" for i in range(n)],
                                       "caption": [scene_caption(i) for i in range(n)]})
    scan.cast_column("image", datasets.Image()).save_to_disk(str(root / "UCSC-VLAA" / "MedTrinity-25M"))
    return root


def tiny_options(project: str, root: Path, out: Path) -> List[str]:
    opts = [f"run.cache_root={root}", f"run.output_dir={out}", "run.device=cpu", "run.amp=false",
            "run.distributed=false", "run.num_workers=0", "run.batch_size_train=4", "run.batch_size_eval=2",
            "run.warmup_steps=1", "run.plot_curves=false", "run.log_backends=[]"]
    if project.startswith("demo/"):
        return opts + ["run.max_epoch=1"] + [
            f"datasets.synthetic_shapes.build_info.annotations.{s}.num_samples={n}" for s, (_, n) in SPLITS.items()]
    name = "caption_custom" if "fashion" in project else "hf_caption"
    opts += ["model.model_type=tiny", "model.load_pretrained=false", "model.load_finetuned=false",
             "run.num_beams=1", "run.max_len=8", "run.min_len=1", "run.accum_grad_iters=1",
             # the caption metrics (METEOR's Java start-up) are tested elsewhere: here only the captions
             "run.report_metric=false"]
    opts += [f"datasets.{name}.vis_processor.{s}.image_size=32" for s in ("train", "eval")]
    # three epochs: the fashion recipe unfreezes the last 2 ViT blocks at epoch 2
    return opts + ["run.max_epoch=3" if "fashion" in project else "run.max_epoch=1"]


@pytest.mark.parametrize("name", PROJECTS, ids=[p[:-5] for p in PROJECTS])
def test_project_runs_on_tiny_types(name: str, root: Path, tmp_path: Path, caplog):
    with caplog.at_level("INFO"):
        run_in_process(["train.py", "--cfg-path", str(REPO / "projects" / name), "--options",
                        *tiny_options(name, root, tmp_path)])
    run_dir = only_run_dir(tmp_path)
    records = read_log(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    assert train and all(r["loss"] == r["loss"] for r in train), records[:3]  # trained, finite losses
    evals = [r for r in records if str(r.get("kind", "")).startswith("eval/")]
    if name.startswith("demo/"):
        assert evals and "agg_metrics" in evals[-1], evals
        return
    predictions = json.loads((run_dir / "result" / f"{'caption_custom' if 'fashion' in name else 'hf_caption'}_val_0.json").read_text())
    assert predictions and all(isinstance(p["caption"], str) for p in predictions)
    if "medtrinity" in name:  # 10 rows split 90 / 10: one validation image, a LoRA adapter
        assert len(predictions) == 1 and predictions[0]["image_id"].startswith("m")
        assert (run_dir / "adapter" / "adapter_config.json").is_file() and (run_dir / "hf_model").is_dir()
    else:
        assert "unfroze" in caplog.text.lower(), "the scheduled unfreezing never ran"
