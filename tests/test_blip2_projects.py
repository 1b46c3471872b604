"""Every BLIP-2 project runs end to end on the tiny model types and synthetic data laid
out as LAVIS's files (``write_shapes_lavis``), with only sizes and paths overridden:
pretraining stages 1 and 2, caption and retrieval fine-tuning, and the three
evaluations. Retrieval evaluated on 2 gloo ranks gives the same numbers as on 1."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO, only_run_dir, read_log, run_script
from vlft.datasets.synthetic_lavis import write_shapes_lavis

PROJECTS = sorted((REPO / "projects" / "blip2").rglob("*.yaml"))
TASK_OPTIONS = {
    "captioning": ["run.num_beams=1", "run.max_len=12", "run.min_len=1"],
    "retrieval": ["run.k_test=4"],
    "vqa": ["run.num_beams=1", "run.max_len=3"],
    "image_text_pretrain": [],
}
EXPECTED = {"captioning": "CIDEr", "retrieval": "txt_r1", "vqa": "overall", "image_text_pretrain": "loss"}


@pytest.fixture(scope="module")
def lavis_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lavis")
    write_shapes_lavis(root, n_train=16, n_val=8, n_test=8, image_size=32)
    return root


def tiny_options(project: Path, root: Path, out: Path) -> List[str]:
    cfg = OmegaConf.load(project)
    opts = ["model.model_type=tiny", "model.load_pretrained=false", "model.load_finetuned=false",
            f"run.cache_root={root}", f"run.output_dir={out}", "run.device=cpu", "run.amp=false",
            "run.distributed=false", "run.max_epoch=1", "run.batch_size_train=8", "run.batch_size_eval=8",
            "run.num_workers=0"]
    opts += [f"model.{k}=null" for k in ("vit_pretrained", "qformer_init") if k in cfg.model]
    if "warmup_steps" in cfg.run:
        opts.append("run.warmup_steps=1")
    for name, ds in cfg.datasets.items():
        for split in ds.get("vis_processor") or {}:
            opts.append(f"datasets.{name}.vis_processor.{split}.image_size=32")
    return opts + TASK_OPTIONS[cfg.run.task]


@pytest.mark.parametrize("project", PROJECTS, ids=[p.stem for p in PROJECTS])
def test_project_runs_on_tiny_model(project: Path, lavis_root: Path, tmp_path: Path):
    cfg = OmegaConf.load(project)
    script = "evaluate.py" if cfg.run.get("evaluate") else "train.py"
    run_script([script, "--cfg-path", str(project), "--options", *tiny_options(project, lavis_root, tmp_path)])
    records = read_log(only_run_dir(tmp_path))
    evals = [r for r in records if str(r.get("kind", "")).startswith("eval/")]
    assert evals, f"{project.name}: no evaluation was logged"
    metrics = evals[-1]
    assert EXPECTED[cfg.run.task] in metrics, metrics


def test_retrieval_on_two_ranks_matches_one(lavis_root: Path, tmp_path: Path):
    project = REPO / "projects" / "blip2" / "eval" / "ret_coco_eval.yaml"
    results = []
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        # one image / four texts / one pair per forward on any number of ranks, so that the
        # random tiny model's near-tied scores are computed bit for bit the same way
        opts = tiny_options(project, lavis_root, out) + ["run.batch_size_eval=1", "run.text_batch_size=4",
                                                         "run.itm_batch_size=1"]
        opts = [o for o in opts if o != "run.distributed=false"] + [f"run.distributed={nproc > 1}"]
        run_script(["evaluate.py", "--cfg-path", str(project), "--options", *opts], nproc=nproc)
        records = [r for r in read_log(only_run_dir(out)) if str(r.get("kind", "")).startswith("eval/")]
        results.append(records[-1])
    for key in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10"):
        assert results[0][key] == results[1][key], key
