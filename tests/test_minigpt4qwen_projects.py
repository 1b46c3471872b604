"""The MiniGPT4-Qwen projects and the chat demo run a few steps on the tiny model type, on
the shapes chat written in the files the projects name (``write_reference_layout``), with
only sizes and paths overridden. The DeepSpeed projects run in the single DeepSpeed launch
of tests/models/test_minigpt4qwen_deepspeed.py. The chat CLI answers on that model."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List

import pytest
from omegaconf import OmegaConf

from tests.helpers import REPO, only_run_dir, read_log, run_in_process

PROJECTS = sorted(str(p.relative_to(REPO / "projects")) for p in (REPO / "projects" / "minigpt4qwen").rglob("*.yaml"))
DEEPSPEED = [p for p in PROJECTS if "zero" in p or "full_llm" in p]
CHAT_DEMO = "demo/chat_shapes.yaml"


def tiny_options(project: Path, root: Path, out: Path) -> List[str]:
    """What turns a project into a few tiny steps on CPU (sizes and paths only)."""
    cfg = OmegaConf.load(project)
    opts = ["model.model_type=tiny", "model.load_pretrained=false", "model.load_finetuned=false", "model.image_size=32",
            "model.num_query_token=4", "model.vit_precision=fp32", "model.max_txt_len=256",
            f"run.cache_root={root}", f"run.output_dir={out}", "run.device=cpu", "run.amp=false",
            "run.distributed=false", "run.max_epoch=1", "run.batch_size_train=4", "run.batch_size_eval=4",
            "run.accum_grad_iters=1", "run.warmup_steps=1", "run.num_workers=0", "run.max_len=3", "run.plot_curves=false"]
    if cfg.model.get("get_lora"):
        opts.append("model.lora_target_modules=[q_proj,v_proj]")  # the tiny LLM is a Qwen2
    if cfg.run.get("answer_metric") == "caption":
        opts.append("run.answer_metric=vqa")  # one-word answers; spares the METEOR JVM
    if cfg.run.get("runner") == "deepspeed_runner" or cfg.run.get("deepspeed_config"):
        opts.append("run.batch_size_train=2")
    for name, ds in cfg.datasets.items():
        for split in ds.get("vis_processor") or {}:
            opts.append(f"datasets.{name}.vis_processor.{split}.image_size=32")
    return opts


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    from vlft.datasets.synthetic_chat import write_reference_layout

    return write_reference_layout(tmp_path_factory.mktemp("minigpt4qwen_data"), n_train=8, n_val=4)


def test_projects_and_run_scripts_exist():
    assert {"minigpt4qwen/train/minigpt4qwen.yaml", "minigpt4qwen/train/minigpt4qwen_lora.yaml",
            "minigpt4qwen/train/minigpt4qwen_full_llm.yaml", "minigpt4qwen/train/minigpt4qwen_zero2_offload.yaml",
            "minigpt4qwen/train/minigpt4qwen_zero3.yaml", "minigpt4qwen/eval/minigpt4qwen_eval.yaml"} <= set(PROJECTS)
    for p in PROJECTS:
        assert (REPO / "run_scripts" / p).with_suffix(".sh").is_file(), p


@pytest.mark.parametrize("name", [p for p in PROJECTS if p not in DEEPSPEED], ids=lambda p: p[13:-5])
def test_project_runs_on_the_tiny_model(name: str, layout: Path, tmp_path: Path, caplog):
    project = REPO / "projects" / name
    cfg = OmegaConf.load(project)
    script = "evaluate.py" if cfg.run.get("evaluate") else "train.py"
    with caplog.at_level("INFO"):
        run_in_process([script, "--cfg-path", str(project), "--options", *tiny_options(project, layout, tmp_path)])
    run_dir = only_run_dir(tmp_path)
    records = read_log(run_dir)
    if script == "train.py":
        train = [r for r in records if r.get("kind") == "train"]
        assert train and all(r["loss"] == r["loss"] for r in train), records[:3]
    else:
        evals = [r for r in records if str(r.get("kind", "")).startswith("eval/")]
        assert evals and "overall" in evals[-1] and "loss" in evals[-1]
    if cfg.model.get("get_lora"):
        assert (run_dir / "hf_model" / "llm_adapter" / "adapter_config.json").is_file()
        assert (run_dir / "hf_model" / "llm" / "config.json").is_file()
    if cfg.run.get("train_dataset_ratios"):
        assert "mixed by ratio" in caplog.text


def test_chat_demo_trains_a_few_steps_and_the_cli_answers(tmp_path: Path):
    from vlft.chat import ChatSession, load_chat_model, main
    from vlft.datasets.synthetic_shapes import make_scene

    project = REPO / "projects" / CHAT_DEMO
    run_in_process(["train.py", "--cfg-path", str(project), "--options", f"run.output_dir={tmp_path / 'out'}",
                    "run.max_iters=2", "run.iters_per_inner_epoch=2", "run.batch_size_train=4",
                    "datasets.shapes_chat.build_info.annotations.train.num_samples=8",
                    "datasets.shapes_chat.build_info.annotations.val.num_samples=4", "run.plot_curves=false",
                    "run.num_workers=0"])
    run_dir = only_run_dir(tmp_path / "out")
    evals = [r for r in read_log(run_dir) if str(r.get("kind", "")).startswith("eval/")]
    assert len(evals) == 2 and all("acc_q0" in r for r in evals)  # untrained, then after 2 steps

    make_scene(3, image_size=32)["image"].save(tmp_path / "scene.png")
    model, vis = load_chat_model(str(project), str(run_dir / "checkpoint_best.pth"))
    written: List[str] = []
    session = ChatSession(model, vis, stream=True, write=written.append)
    assert ":clear-his" in session.handle(":help")
    assert session.handle(f":img {tmp_path / 'scene.png'},{tmp_path / 'scene.png'}") == "2 image(s) ready for your next message"
    session.handle(":conf max_new_tokens=3")
    reply = session.handle("what colour is the left shape?")
    assert "".join(written).strip() == reply.strip()  # streamed as generated
    assert session.history[0]["content"].startswith("<Img><ImageHere></Img><Img><ImageHere></Img> what colour")
    assert session.handle(":his").count("user:") == 1 and session.handle(":clh") == "conversation cleared"
    assert session.handle(":q") is None and "unknown command" in session.handle(":nope")
    import sys

    stdin, stdout = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO("is the right shape red?\n:q\n"), io.StringIO()
    try:
        assert main(["--cfg-path", str(project), "--cpu-only", "--no-stream", "--options", "model.max_txt_len=64"]) == 0
        printed = sys.stdout.getvalue()
    finally:
        sys.stdin, sys.stdout = stdin, stdout
    assert "Assistant> " in printed and ":help for commands" in printed
