"""Every project that mirrors one of LAVIS's BLIP / BLIP-2 project YAMLs
(``lavis/projects/{blip,blip2}/**``, same relative paths under ``projects/``) runs end
to end on the tiny model types and the synthetic data that ``write_lavis_layout`` lays
out in LAVIS's file formats, with only sizes and paths overridden: training projects
train a few steps and validate, evaluation projects evaluate. Retrieval evaluated on 2
gloo ranks gives the same numbers as on 1."""
from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO, only_run_dir, read_log, run_in_process, run_script
from vlft.datasets.synthetic_lavis import write_shapes_lavis

# the mirrors of LAVIS's 34 files (projects/blip/train/caption_fashion_unfreeze.yaml and
# caption_medtrinity_lora.yaml are vlft's own, run by tests/test_vlft_projects.py)
LAVIS_PROJECTS = [
    "blip/coco_cap_ft_iter.yaml",
    *(f"blip/eval/{n}.yaml" for n in ("aokvqa_eval", "caption_coco_eval", "caption_coco_eval_large", "nlvr_eval",
                                      "nocaps_eval", "okvqa_eval", "ret_coco_eval", "ret_flickr_eval", "vqav2_eval")),
    *(f"blip/train/{n}.yaml" for n in ("aokvqa_ft", "caption_coco_ft", "caption_coco_large_ft", "nlvr_ft", "okvqa_ft",
                                       "pretrain_14m", "retrieval_coco_ft", "retrieval_flickr_ft", "vqav2_ft")),
    *(f"blip2/eval/{n}.yaml" for n in ("caption_coco_flant5xl_eval", "caption_coco_opt2.7b_eval",
                                       "caption_coco_opt6.7b_eval", "caption_nocaps_out_domain_flant5xl_eval",
                                       "caption_nocaps_out_domain_flant5xxl_eval", "gqa_zeroshot_flant5xl_eval",
                                       "okvqa_zeroshot_flant5xl_eval", "ret_coco_eval", "ret_flickr_eval",
                                       "vqav2_zeroshot_flant5xl_eval", "vqav2_zeroshot_opt_eval")),
    *(f"blip2/train/{n}.yaml" for n in ("caption_coco_ft", "pretrain_stage1", "pretrain_stage2", "retrieval_coco_ft")),
]
TASK_OPTIONS = {
    "captioning": ["run.num_beams=1", "run.max_len=12", "run.min_len=1"],
    "retrieval": ["run.k_test=4"],
    "vqa": ["run.num_beams=1", "run.max_len=3", "run.num_ans_candidates=4"],
    "aok_vqa": ["run.num_beams=1", "run.max_len=3", "run.num_ans_candidates=4"],
    "gqa": ["run.num_beams=1", "run.max_len=3"],
    "image_text_pretrain": [],
    "multimodal_classification": [],
}
EXPECTED = {"captioning": "CIDEr", "retrieval": "txt_r1", "vqa": "overall", "aok_vqa": "agg_metrics",
            "gqa": "agg_metrics", "image_text_pretrain": "loss", "multimodal_classification": "agg_metrics"}


def test_every_lavis_mirror_exists():
    missing = [p for p in LAVIS_PROJECTS if not (REPO / "projects" / p).is_file()]
    assert not missing and len(LAVIS_PROJECTS) == 34
    for p in LAVIS_PROJECTS:
        assert (REPO / "run_scripts" / p).with_suffix(".sh").is_file(), p


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
    if "image_size" in cfg.model:
        opts.append("model.image_size=32")
    if "queue_size" in cfg.model:
        opts.append("model.queue_size=16")
    if "warmup_steps" in cfg.run:
        opts.append("run.warmup_steps=1")
    if cfg.run.get("annotation_file"):  # the official NoCaps references, as the synthetic layout writes them
        opts.append("run.annotation_file=nocaps/annotations/nocaps_val_4500_captions.json")
    if cfg.run.get("runner") == "runner_iter":
        opts += ["run.max_iters=2", "run.iters_per_inner_epoch=2"]
    for name, ds in cfg.datasets.items():
        for split in ds.get("vis_processor") or {}:
            opts.append(f"datasets.{name}.vis_processor.{split}.image_size=32")
    return opts + TASK_OPTIONS[cfg.run.task]


@pytest.mark.parametrize("name", LAVIS_PROJECTS, ids=[p[:-5] for p in LAVIS_PROJECTS])
def test_project_runs_on_tiny_model(name: str, lavis_root: Path, tmp_path: Path):
    project = REPO / "projects" / name
    cfg = OmegaConf.load(project)
    script = "evaluate.py" if cfg.run.get("evaluate") else "train.py"
    run_in_process([script, "--cfg-path", str(project), "--options", *tiny_options(project, lavis_root, tmp_path)])
    records = read_log(only_run_dir(tmp_path))
    evals = [r for r in records if str(r.get("kind", "")).startswith("eval/")]
    if script == "train.py":
        train = [r for r in records if r.get("kind") == "train"]
        assert train and all(r["loss"] == r["loss"] for r in train), records[:3]  # trained, finite losses
    if not cfg.run.get("report_metric", True):
        assert list((only_run_dir(tmp_path) / "result").glob("*.json")), "no predictions were saved"
    elif cfg.run.get("valid_splits") or cfg.run.get("test_splits"):
        assert evals, f"{name}: no evaluation was logged"
        assert EXPECTED[cfg.run.task] in evals[-1], evals[-1]
    else:  # pretraining: LAVIS's recipe validates nothing
        assert not evals


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
