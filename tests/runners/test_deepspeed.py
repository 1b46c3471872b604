"""DeepSpeed on CPU: the config inline in the YAML, ZeRO-2 trains, checkpoints and resumes
bit-identically after a kill -9; ZeRO 0 / 1, bf16 and ``runner: runner_deepspeed`` train;
a non-finite loss leaves the weights alone; two ranks under the ``deepspeed`` launcher,
resumed under torchrun.

Training runs are subprocesses (a DeepSpeed engine needs a process group, which must not
leak into the test process). DeepSpeed's first start JIT-compiles a CPU comm op (~25 s
or more); TORCH_EXTENSIONS_DIR points at a stable cache so later runs reuse it.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from tests.helpers import PLUGINS, REPO, only_run_dir, read_log, run_script, subprocess_env  # noqa: E402

DS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "DS_ACCELERATOR": "cpu",
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR")
    or str(Path.home() / ".cache" / "torch_extensions"),
}
TIMEOUT = 420  # the first run may compile DeepSpeed's comm op
VAL = "eval/toy_regression/val"

PROJECT = """\
imports: [{plugin}]
model: {{arch: toy_regressor, model_type: tiny}}
datasets:
  toy_regression: {{}}
run:
  task: toy_regression
  runner: {runner}
  lr_sched: linear_warmup_cosine_lr
  init_lr: 0.01
  warmup_steps: 3
  max_epoch: {max_epoch}
  batch_size_train: 8
  batch_size_eval: 16
  device: cpu
  seed: 7
  log_freq: 4
  output_dir: {output_dir}
  valid_splits: [val]
  test_splits: []
  plot_curves: false
  checkpoint_every_iters: {every}
  amp: {amp}
  deepspeed_config:
    zero_optimization:
      stage: {stage}
"""


def write_project(tmp_path: Path, stage: int = 2, amp: str = "false", runner: str = "runner_base",
                  max_epoch: int = 3, every: int = 5) -> Path:
    path = tmp_path / f"ds_zero{stage}_{amp}.yaml"
    path.write_text(PROJECT.format(plugin=PLUGINS / "toy_plugin.py", runner=runner, max_epoch=max_epoch,
                                   output_dir=tmp_path / "out", every=every, amp=amp, stage=stage))
    return path


def train(cfg: Path, output_dir: Path, *options: str, resume: bool = False, expect_ok: bool = True):
    args = ["train.py", "--cfg-path", str(cfg), *(["--resume", "auto"] if resume else []),
            "--options", f"run.output_dir={output_dir}", *options]
    proc = run_script(args, expect_ok=expect_ok, timeout=TIMEOUT, env=DS_ENV)
    return proc, proc.stdout + proc.stderr


def val_mse(run_dir: Path):
    return [r["mse"] for r in read_log(run_dir) if r["kind"] == VAL]


def latest(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint_latest.pth", weights_only=True)


def resumed_at(output: str) -> int:
    found = re.search(r"resumed from \S+ at step (\d+)", output)
    assert found, output[-3000:]
    return int(found.group(1))


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    """The runs below start their own ranks: no launcher variables from this process."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- config mapping (no engine)
def test_run_keys_fill_the_deepspeed_config(toy_config):
    from vlft.runners.deepspeed_strategy import deepspeed_config

    ds = deepspeed_config(toy_config("run.accum_grad_iters=2", "run.batch_size_train=4",
                                     "run.deepspeed_config={zero_optimization: {stage: 1}}").run_cfg)
    assert ds["zero_optimization"] == {"stage": 1}
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 2, 8)
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed's own default would clip at 1.0
    assert "bf16" not in ds and "fp16" not in ds

    ds = deepspeed_config(toy_config("run.max_grad_norm=0.5", "run.amp=bf16",
                                     "run.deepspeed_config={zero_optimization: {stage: 2}}").run_cfg)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}

    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        deepspeed_config(toy_config("run.deepspeed_config={gradient_accumulation_steps: 4}").run_cfg)
    with pytest.raises(ValueError, match="fp16"):
        deepspeed_config(toy_config("run.amp=bf16", "run.deepspeed_config={fp16: {enabled: true}}").run_cfg)


def test_runner_deepspeed_selects_the_strategy_with_zero2_by_default(toy_config):
    from vlft.runners.deepspeed_strategy import DeepSpeedStrategy
    from vlft.runners.strategies import SingleStrategy, build_strategy

    cpu = torch.device("cpu")
    strategy = build_strategy(toy_config("run.runner=runner_deepspeed").run_cfg, cpu)
    assert isinstance(strategy, DeepSpeedStrategy) and strategy.ds_config["zero_optimization"] == {"stage": 2}
    strategy = build_strategy(toy_config("run.deepspeed_config={zero_optimization: {stage: 0}}").run_cfg, cpu)
    assert isinstance(strategy, DeepSpeedStrategy)
    assert type(build_strategy(toy_config().run_cfg, cpu)) is SingleStrategy


# ---------------------------------------------------------------- ZeRO-2: train, kill -9, resume
def test_zero2_trains_checkpoints_and_resumes_bit_identical(tmp_path):
    cfg = write_project(tmp_path)  # 8 steps per epoch, 24 in all; checkpoints at 5, 8, 10, 15, 16, 20, 24

    _, out = train(cfg, tmp_path / "straight")
    assert "with deepspeed on 1 process(es)" in out and "ZeRO stage 2, fp32" in out
    straight = only_run_dir(tmp_path / "straight")
    mse = val_mse(straight)
    assert len(mse) == 3 and mse[-1] < mse[0], mse
    assert (straight / "checkpoint_best.pth").is_file()
    ckpt = latest(straight)
    assert ckpt["progress"]["step"] == 24
    tag = straight / "checkpoint_latest.pth.ds" / ckpt["strategy"]["deepspeed_tag"]
    assert (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").is_file(), sorted(tag.parent.rglob("*"))

    killed, out = train(cfg, tmp_path / "resumed", "run.kill_at_micro_step=13", expect_ok=False)
    assert killed.returncode != 0, "the run was meant to die in step 13"
    run_dir = only_run_dir(tmp_path / "resumed")
    assert latest(run_dir)["progress"]["step"] == 10

    _, out = train(cfg, tmp_path / "resumed", resume=True)
    assert resumed_at(out) == 10
    assert only_run_dir(tmp_path / "resumed") == run_dir
    assert latest(run_dir)["progress"]["step"] == 24
    mse_resumed = val_mse(run_dir)  # the killed run's first validation, then the resumed run's
    assert len(mse_resumed) == 3 and mse_resumed[-1] < mse_resumed[0]

    # the optimizer state came back from the DeepSpeed folder: same weights to the bit
    a, b = ckpt["model"], latest(run_dir)["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name}: max abs diff {(a[name] - b[name]).abs().max()}"


# ---------------------------------------------------------------- other stages, bf16, runner name
@pytest.mark.parametrize("stage,amp,runner", [(0, "false", "runner_base"), (1, "bf16", "runner_deepspeed")],
                         ids=["zero0_fp32", "zero1_bf16_runner_deepspeed"])
def test_other_stages_and_bf16_train(tmp_path, stage, amp, runner):
    cfg = write_project(tmp_path, stage=stage, amp=amp, runner=runner, max_epoch=2, every=0)
    _, out = train(cfg, tmp_path / "out")
    assert f"ZeRO stage {stage}, {'bf16' if amp == 'bf16' else 'fp32'}" in out
    run_dir = only_run_dir(tmp_path / "out")
    mse = val_mse(run_dir)
    assert len(mse) == 2 and mse[-1] < mse[0], mse
    assert latest(run_dir)["progress"]["step"] == 16


# ---------------------------------------------------------------- non-finite losses
def test_non_finite_losses_leave_the_weights_alone(tmp_path):
    """Steps 4-6 have NaN losses; after 3 in a row the run stops and saves. The engine
    still stepped (at lr 0), so the weights must be exactly those after step 3."""
    cfg = write_project(tmp_path, every=3)
    proc, out = train(cfg, tmp_path / "out", "run.nan_at_micro_steps=[4,5,6]", "run.max_nonfinite_steps=3",
                      expect_ok=False)
    assert proc.returncode == 1 and "error: 3 consecutive steps had a non-finite loss (last at step 6)" in out
    assert "non-finite loss at step 4: update skipped" in out
    run_dir = only_run_dir(tmp_path / "out")
    ckpt = latest(run_dir)
    assert ckpt["progress"]["step"] == 6 and ckpt["progress"]["nonfinite_in_a_row"] == 3
    # the previous DeepSpeed tag (step 3) is kept until the next save
    step3 = torch.load(run_dir / "checkpoint_latest.pth.ds" / "step3" / "mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)["module"]
    for name, value in ckpt["model"].items():
        assert torch.equal(value, step3[name]), name


# ---------------------------------------------------------------- two ranks
def test_two_ranks_deepspeed_launcher_then_resume_under_torchrun(tmp_path):
    """Per rank 4 steps per epoch, 12 in all; checkpoints every 3 steps; killed in step 8."""
    cfg = write_project(tmp_path, every=3)
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                "--master_port", str(free_port()), "train.py", "--cfg-path", str(cfg),
                "--options", f"run.output_dir={tmp_path / 'out'}", "run.kill_at_micro_step=8"]
    killed = subprocess.run(launcher, cwd=REPO, env=subprocess_env(DS_ENV), capture_output=True, text=True,
                            timeout=TIMEOUT)
    out = killed.stdout + killed.stderr
    assert killed.returncode != 0, out[-3000:]
    assert "with deepspeed on 2 process(es)" in out, out[-3000:]
    run_dir = only_run_dir(tmp_path / "out")
    ckpt = latest(run_dir)
    assert ckpt["progress"]["step"] == 6 and len(ckpt["rng"]) == 2
    shards = run_dir / "checkpoint_latest.pth.ds" / ckpt["strategy"]["deepspeed_tag"]
    assert sorted(p.name for p in shards.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]

    resumed = run_script(["train.py", "--cfg-path", str(cfg), "--resume", "auto",
                          "--options", f"run.output_dir={tmp_path / 'out'}"], nproc=2, timeout=TIMEOUT, env=DS_ENV)
    out = resumed.stdout + resumed.stderr
    assert resumed_at(out) == 6
    assert latest(run_dir)["progress"]["step"] == 12
    mse = val_mse(run_dir)
    assert len(mse) == 3 and mse[-1] < mse[0], mse
    assert all(r["count"] == 32 for r in read_log(run_dir) if r["kind"] == VAL)
