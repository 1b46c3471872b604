"""Every Florence-2 project (projects/florence2/**, projects/demo/detect_shapes.yaml) runs a
few steps in-process on the tiny model type with synthetic data the test writes in each
project's format; only sizes and paths are overridden. The run folder gets the metrics,
the pictures, the COCO results and (LoRA projects) the peft adapter."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import json
from pathlib import Path
from typing import List

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO, only_run_dir, read_log
from vlft.datasets.synthetic_detection import write_coco_detection, write_florence_jsonl, write_grounding_jsonl
from vlft.datasets.synthetic_shapes import make_scene, scene_caption
from vlft.launch import main_train

PROJECTS = sorted((REPO / "projects" / "florence2").rglob("*.yaml")) + [REPO / "projects" / "demo" / "detect_shapes.yaml"]
METRIC = {"detection": "mAP", "grounding": "accuracy", "captioning": "agg_metrics", "ocr": "CER"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("florence2_data")
    for split, n in (("train", 8), ("val", 2)):
        write_coco_detection(root / "coco", split, n)
        write_florence_jsonl(root / "jsonl", split, n)
        write_grounding_jsonl(root / "grounding", split, n)
    _write_hf(root / "hf")
    _write_text_pairs(root / "pairs")
    return root


def _write_hf(path: Path) -> None:
    import datasets

    from vlft.processors.florence2 import boxes_to_text
    from vlft.datasets.synthetic_detection import scene_boxes

    def split(offset: int, n: int):
        objects = [scene_boxes(offset + i) for i in range(n)]
        return datasets.Dataset.from_dict({
            "image": [make_scene(offset + i)["image"] for i in range(n)], "prefix": ["<OD>"] * n,
            "suffix": [boxes_to_text([c for c, _ in o], [b for _, b in o], (64, 64)) for o in objects],
        }).cast_column("image", datasets.Image())

    datasets.DatasetDict({"train": split(0, 10), "test": split(2_000_000, 2)}).save_to_disk(str(path))


def _write_text_pairs(root: Path) -> None:
    """Image / text pairs as JSONL (OCR) and as LAVIS's Karpathy caption files."""
    (root / "images").mkdir(parents=True)
    karpathy = {}
    for split, offset, n in (("train", 0, 8), ("val", 1_000_000, 2), ("test", 2_000_000, 2)):
        rows = []
        for i in range(n):
            name = f"images/{split}_{i}.png"
            make_scene(offset + i)["image"].save(root / name)
            rows.append({"image": name, "text": scene_caption(offset + i).upper(), "caption": scene_caption(offset + i),
                         "image_id": offset + i})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        karpathy[split] = rows
    ann = root / "annotations"
    ann.mkdir()
    for split, rows in karpathy.items():
        records = [{"image": r["image"], "caption": r["caption"] if split == "train" else [r["caption"]],
                    "image_id": r["image_id"]} for r in rows]
        (ann / f"coco_karpathy_{split}.json").write_text(json.dumps(records))


def data_options(name: str, root: Path) -> List[str]:
    """Point one dataset of a project at the synthetic files of its format."""
    ann = f"datasets.{name}.build_info.annotations"
    if name == "coco_detection":
        return [f"{ann}.train.storage={root}/coco/instances_train.json", f"{ann}.train.image_root={root}/coco",
                f"{ann}.val.storage={root}/coco/instances_val.json", f"{ann}.val.image_root={root}/coco"]
    if name in ("florence_jsonl", "grounding_jsonl"):
        folder, stem = ("jsonl", "") if name == "florence_jsonl" else ("grounding", "grounding_")
        return [f"{ann}.train.storage={root}/{folder}/{stem}train.jsonl", f"{ann}.val.storage={root}/{folder}/{stem}val.jsonl",
                f"datasets.{name}.build_info.images.storage={root}/{folder}"]
    if name == "hf_florence":
        return [f"datasets.{name}.build_info.path={root}/hf"]
    if name == "caption_custom":
        return [f"{ann}.train.storage={root}/pairs/train.jsonl", f"{ann}.val.storage={root}/pairs/val.jsonl"]
    if name == "coco_caption":
        return [f"{ann}.{s}.storage={root}/pairs/annotations/coco_karpathy_{s}.json" for s in ("train", "val", "test")] + [
            f"datasets.{name}.build_info.images.storage={root}/pairs"]
    if name == "shapes_detection":
        return [f"{ann}.train.num_samples=8", f"{ann}.val.num_samples=2"]
    raise AssertionError(f"no synthetic data for {name}")


def tiny_options(project: Path, root: Path, out: Path) -> List[str]:
    cfg = OmegaConf.load(project)
    opts = ["model.model_type=tiny", "model.load_pretrained=false", f"run.output_dir={out}", "run.device=cpu",
            "run.amp=false", "run.distributed=false", "run.max_epoch=1", "run.batch_size_train=4", "run.batch_size_eval=2",
            "run.num_workers=0", "run.num_beams=1", "run.max_len=6", "run.log_backends=[]", "run.plot_curves=false",
            f"run.cache_root={root}"]
    opts += ["run.warmup_steps=1"] if "warmup_steps" in cfg.run else []
    # the caption metrics (METEOR's Java start-up) are tested elsewhere: here only the captions
    opts += ["run.min_len=1", "run.report_metric=false"] if cfg.run.task == "captioning" else []
    for name, ds in cfg.datasets.items():
        opts += data_options(name, root)
        for split in ds.get("vis_processor") or {}:
            opts.append(f"datasets.{name}.vis_processor.{split}.image_size=64")
    return opts


@pytest.mark.parametrize("project", PROJECTS, ids=[p.stem for p in PROJECTS])
def test_project_runs_on_tiny_model(project: Path, data: Path, tmp_path: Path):
    cfg = OmegaConf.load(project)
    assert main_train(["--cfg-path", str(project), "--options", *tiny_options(project, data, tmp_path)]) == 0
    run_dir = only_run_dir(tmp_path)
    evals = [r for r in read_log(run_dir) if str(r.get("kind", "")).startswith("eval/")]
    assert evals and METRIC[cfg.run.task] in evals[-1], evals
    if not cfg.run.get("evaluate"):
        assert [r for r in read_log(run_dir) if r.get("kind") == "train"], "no training step was logged"
    if cfg.run.task in ("detection", "grounding"):
        assert list((run_dir / "pictures").glob("*.png"))
    if cfg.run.task == "detection":
        assert list((run_dir / "result").glob("*_coco_results.json"))
    if cfg.model.get("peft"):
        assert (run_dir / "adapter" / "adapter_config.json").is_file() and (run_dir / "hf_model").is_dir()
    if project.name == "detect_shapes.yaml":  # the untrained baseline, then the trained model
        assert [r["kind"] for r in evals] == ["eval/shapes_detection/val"] * 2
        assert {p.name for p in (run_dir / "pictures").glob("*.png")} == {"val_start.png", "val_0.png"}
