"""MiniGPT4-Qwen under DeepSpeed on CPU (tiny model): ZeRO 0, 1, 2 (with CPU optimizer
offload: the zero2_offload project) and 3, fp32 and bf16, on 1 and 2 ranks; ZeRO-3 with real partitioning and a frozen
fp16 ViT, killed with kill -9 and resumed bit-identical; ZeRO-2 resumed from a snapshot
bit-identical on 2 ranks; the best checkpoint chosen by validation; the final fp32 model
consolidated by DeepSpeed's zero_to_fp32; the ZeRO state holding the trainable weights only.

Every run comes from ONE interpreter start (the imports are the slow part): a driver forks
one child per rank and run, so no process group outlives its run (see DRIVER). The
DeepSpeed projects of projects/minigpt4qwen run a few tiny steps in the same launch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from tests.helpers import REPO, only_run_dir, read_log, subprocess_env  # noqa: E402

DRIVER = '''
"""Every run from one interpreter: imports once, then one forked child per rank and run.
argv: config, JSON list of runs {"out", "options", "world", "crash_at", "resume", "cfg"}; a run
with crash_at must die by SIGKILL in that micro-step; resume "snapshot:<dir>" is the
epoch-0 snapshot of the only run folder in <dir>."""
import json, os, signal, socket, sys
from pathlib import Path

import deepspeed  # noqa: F401  (imported before the forks)
import deepspeed.runtime.zero.stage3, deepspeed.runtime.zero.stage_1_and_2, deepspeed.runtime.bf16_optimizer  # noqa
import vlft.models, vlft.tasks  # noqa: F401
from vlft.launch import main_train
from vlft.models import load_model

load_model("minigpt4qwen", "tiny")  # the lazy imports of transformers' modules, once for every child


def run(cfg, spec):
    world = int(spec.get("world", 1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resume = spec.get("resume")
    if resume and resume.startswith("snapshot:"):
        folder = Path(resume.split(":", 1)[1])
        resume = str(next(p for p in folder.iterdir() if p.is_dir()) / "checkpoint_0.pth")
    args = ["--cfg-path", spec.get("cfg", cfg)] + (["--resume", resume] if resume else [])
    args += ["--options", "run.output_dir=" + spec["out"], *spec.get("options", [])]
    children = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if world > 1:
                    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                if spec.get("crash_at"):
                    os.environ["CRASH_AT"] = str(spec["crash_at"])
                code = main_train(args)
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        ok = (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL) if spec.get("crash_at") else \\
            (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
        assert ok, (spec, status)


for spec in json.loads(sys.argv[2]):
    run(sys.argv[1], spec)
'''
CRASH = '''
"""SIGKILL this process in the training micro-step named by $CRASH_AT (if set)."""
import os, signal
from vlft.tasks.instruction_tuning import InstructionTuningTask

_train_step, _calls = InstructionTuningTask.train_step, [0]


def train_step(self, model, samples):
    _calls[0] += 1
    if str(_calls[0]) == os.environ.get("CRASH_AT"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_step(self, model, samples)


InstructionTuningTask.train_step = train_step
'''
PROJECT = """\
imports: [crash.py]
model: {arch: minigpt4qwen, model_type: tiny}
datasets:
  shapes_chat:
    build_info: {annotations: {train: {num_samples: 16}, val: {num_samples: 8}}}
run:
  task: instruction_tuning
  runner: deepspeed_runner
  answer_metric: none           # agg_metrics = -loss: the best checkpoint is the lowest loss
  max_epoch: 2                  # 2 steps per epoch (batch 4 x accumulation 2)
  batch_size_train: 4
  batch_size_eval: 8
  accum_grad_iters: 2
  init_lr: 1.0e-2
  warmup_steps: 1
  device: cpu
  valid_splits: [val]
  plot_curves: false
  log_freq: 100
  max_len: 2
  save_freq: 1                  # checkpoint_<epoch>.pth snapshots to resume from
  checkpoint_every_iters: 1
  seed: 3
  deepspeed_config:
    zero_optimization: {stage: 2}
"""
# ZeRO-3 that really partitions (the tiny model's tensors are below DeepSpeed's default
# persistence threshold of 1e5 elements); a frozen fp16 ViT in a bf16 engine; generation
# during validation goes through the partitioned parameters
ZERO3 = ["run.amp=bf16", "model.vit_precision=fp16", "run.answer_metric=vqa",
         "run.deepspeed_config.zero_optimization={stage: 3, stage3_param_persistence_threshold: 1000}"]
# 2 steps per epoch on 2 ranks too
ZERO2_2RANKS = ["run.amp=bf16", "run.batch_size_train=2", "run.deepspeed_config.zero_optimization={stage: 2}"]


def project_runs(root: Path) -> list:
    """The DeepSpeed projects, a few tiny steps each, in the same launch."""
    from tests.test_minigpt4qwen_projects import DEEPSPEED, tiny_options
    from vlft.datasets.synthetic_chat import write_reference_layout

    layout = write_reference_layout(root / "layout", n_train=4, n_val=4)
    out = []
    for name in DEEPSPEED:
        project = REPO / "projects" / name
        out.append({"cfg": str(project), "out": str(root / "projects" / Path(name).stem),
                    "options": tiny_options(project, layout, root / "projects" / Path(name).stem)})
    return out


def runs(out: Path) -> list:
    o = lambda name: str(out / name)  # noqa: E731
    return [
        {"out": o("z3/killed"), "crash_at": 5, "options": ZERO3},  # dies in step 3 (micro-step 5)
        {"out": o("z3/killed"), "resume": "auto", "options": ZERO3},
        {"out": o("z3/straight"), "options": ZERO3},
        {"out": o("z0"), "options": ["run.deepspeed_config.zero_optimization={stage: 0}"]},
        {"out": o("z1"), "options": ["run.amp=bf16", "run.deepspeed_config.zero_optimization={stage: 1}"]},
        {"out": o("z2x2/straight"), "world": 2, "options": ZERO2_2RANKS},
        {"out": o("z2x2/resumed"), "world": 2, "resume": f"snapshot:{out / 'z2x2/straight'}", "options": ZERO2_2RANKS},
    ]


@pytest.fixture(scope="module")
def ds_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minigpt4qwen_ds")
    (root / "driver.py").write_text(DRIVER)
    (root / "crash.py").write_text(CRASH)
    (root / "ds.yaml").write_text(PROJECT)
    env = subprocess_env({"DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "TORCH_EXTENSIONS_DIR": os.environ.get(
        "TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    import subprocess

    specs = runs(root / "out") + project_runs(root)
    proc = subprocess.run([sys.executable, "driver.py", "ds.yaml", json.dumps(specs)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    (root / "log.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return root


def latest(out: Path) -> dict:
    return torch.load(only_run_dir(out) / "checkpoint_latest.pth", weights_only=True)


def fp32(out: Path) -> dict:
    return torch.load(only_run_dir(out) / "model_fp32.pth", weights_only=True)["model"]


def test_every_stage_trains_and_leaves_a_consolidated_fp32_model(ds_runs):
    log = (ds_runs / "log.txt").read_text()
    out = ds_runs / "out"
    for stage, precision in ((0, "fp32"), (1, "bf16"), (2, "bf16"), (2, "fp32"), (3, "bf16")):
        assert f"DeepSpeed engine ready: ZeRO stage {stage}, {precision}" in log
    assert "with deepspeed on 2 process(es)" in log  # ZeRO-2 with CPU offload: the zero2_offload project
    for name in ("z0", "z1", "z2x2/straight", "z3/straight"):
        ckpt = latest(out / name)
        assert ckpt["progress"]["step"] == 4
        weights = fp32(out / name)
        assert set(weights) == {"llm_proj.weight", "llm_proj.bias"} == set(ckpt["model"])  # trainable only
        assert all(v.dtype == torch.float32 for v in weights.values())
        for key, value in ckpt["model"].items():  # the engine's copy is the fp32 master rounded to its dtype
            assert torch.equal(weights[key].to(value.dtype), value), (name, key)
        aggs = [r["agg_metrics"] for r in read_log(only_run_dir(out / name)) if r.get("kind", "").startswith("eval/")]
        best = torch.load(only_run_dir(out / name) / "checkpoint_best.pth", weights_only=True)
        assert len(aggs) == 2 and best["progress"]["best_step"] == 2 * (aggs.index(max(aggs)) + 1), (name, aggs)


def test_zero3_kill_9_resume_is_bit_identical_and_holds_only_trainable_state(ds_runs):
    out = ds_runs / "out" / "z3"
    assert "resumed from" in (ds_runs / "log.txt").read_text()
    a, b = latest(out / "killed"), latest(out / "straight")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(fp32(out / "killed")[k], fp32(out / "straight")[k]) for k in a["model"])
    # the ZeRO-3 optimizer partition: the 2,112 trained numbers, none of the frozen ViT / LLM
    shard = next((only_run_dir(out / "straight") / "checkpoint_latest.pth.ds").glob("*/*optim_states.pt"))
    state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    assert sum(t.numel() for t in state["fp32_flat_groups"]) == 64 * 32 + 64
    evals = [r for r in read_log(only_run_dir(out / "straight")) if r.get("kind", "").startswith("eval/")]
    assert evals and "overall" in evals[-1]  # answers generated through partitioned parameters


def test_deepspeed_projects_train_on_the_tiny_model(ds_runs):
    from tests.test_minigpt4qwen_projects import DEEPSPEED

    assert len(DEEPSPEED) == 3
    for name in DEEPSPEED:
        run_dir = only_run_dir(ds_runs / "projects" / Path(name).stem)
        train = [r for r in read_log(run_dir) if r.get("kind") == "train"]
        assert train and all(r["loss"] == r["loss"] for r in train), name
        assert (run_dir / "model_fp32.pth").is_file(), name
    full = torch.load(only_run_dir(ds_runs / "projects" / "minigpt4qwen_full_llm") / "model_fp32.pth", weights_only=True)
    assert any(k.startswith("llm_model.") for k in full["model"])  # the LLM trained too


def test_two_ranks_resume_from_a_snapshot_bit_identical(ds_runs):
    out = ds_runs / "out" / "z2x2"
    a, b = latest(out / "straight"), latest(out / "resumed")
    assert a["progress"] == b["progress"] and len(b["rng"]) == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
