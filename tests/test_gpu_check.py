"""benchmarks/gpu_check.py cannot rot: its CPU dry run prints the table with every check
and no failure; the GPU mode's model shapes, FLOP count and peak table are pinned on
the meta device / the CPU.

The dry run skips the two DeepSpeed checks (about 15 s each even with DeepSpeed's CPU
comm op compiled; tests/runners/test_deepspeed.py covers DeepSpeed on CPU); every other
check runs: training in bf16 and fp16, torchrun with 1 and 2 gloo ranks, retrieval and
VQA evaluation under bf16 autocast, and the three measurements at tiny shapes.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, subprocess_env

BENCH = REPO / "benchmarks"
DS_CHECKS = ("deepspeed_zero2_bf16", "deepspeed_zero3_bf16")


def load(name: str):
    """A module of benchmarks/ (they import each other by name, as the script does)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def gpu_check():
    return load("gpu_check")


@pytest.fixture(scope="module")
def parts():
    return load("_gpu_check_parts")


def test_dry_run_prints_every_check_and_no_failure(gpu_check, tmp_path):
    out_json = tmp_path / "table.json"
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--skip", ",".join(DS_CHECKS),
           "--json", str(out_json)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=420)
    table = proc.stdout
    lines = table.splitlines()
    assert lines[0].split() == ["check", "result", "figure", "seconds"], table + proc.stderr[-3000:]
    rows = {line.split()[0]: line for line in lines[2:] if line.split() and line.split()[0] in gpu_check.CHECK_NAMES}
    assert list(rows) == gpu_check.CHECK_NAMES, table  # every check, in order, once

    report = json.loads(out_json.read_text())
    results = {c["check"]: c for c in report["checks"]}
    assert list(results) == gpu_check.CHECK_NAMES
    for name, check in results.items():
        assert check["result"] in ("PASS", "WARN", "SKIP") and f" {check['result']} " in rows[name], \
            f"{name} {check['result']}: {check['figure']}\n{proc.stderr[-4000:]}"
        assert check["seconds"] >= 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(results[n]["result"] == "SKIP" and results[n]["figure"] == "skipped by --skip" for n in DS_CHECKS)
    skipped = [n for n, c in results.items() if c["result"] == "SKIP" and n not in DS_CHECKS]
    assert not skipped, f"the dry run must exercise these checks: {skipped}"

    # what each check says it measured
    assert "GradScaler (scale 65536)" in results["amp_fp16_gradscaler"]["figure"]
    assert results["torchrun_1rank"]["figure"].startswith("gloo, 1 rank")
    assert results["torchrun_2ranks"]["figure"].startswith("gloo, 2 ranks, DDP")
    assert "samples/s" in results["throughput_blip_base"]["figure"]
    throughput = results["throughput_blip_base"]["detail"]
    assert throughput["mfu"] is None and throughput["flops_per_step_counted"] > 0
    assert throughput["analytic_over_counted"] == pytest.approx(1.0, abs=0.1)
    assert results["blip2_opt2.7b_lora_memory"]["detail"]["batch"] == 16
    assert 0 <= results["loader_wait_share"]["detail"]["wait_share"] <= 1
    assert results["eval_vqa_bf16"]["detail"]["autocast"], "the autocast probe recorded nothing"
    assert "dry-run:" in lines[-1] and "gpu_check dry-run" in proc.stderr and "[1/11] amp_bf16_train" in proc.stderr


def test_peak_table_matches_device_names(parts):
    assert parts.peak_bf16_tflops("NVIDIA H200") == ("H200", 989.0)
    assert parts.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == ("H100", 989.0)
    assert parts.peak_bf16_tflops("NVIDIA H100 PCIe") == ("H100 PCIe", 756.0)
    assert parts.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == ("A100", 312.0)
    assert parts.peak_bf16_tflops("Tesla T4") is None


def test_gpu_mode_models_have_the_real_shapes(parts):
    """Built on the meta device: BLIP base ~224M parameters (ViT-B/16 86M at 384 px, BERT
    vocabulary 30,524); BLIP-2 OPT-2.7B 3.74B (EVA ViT-g 986M in fp16, OPT 2.65B in bf16)."""
    meta = torch.device("meta")
    blip = parts.blip_caption_model("base", meta)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(blip.blip.vision_model) == 86_090_496 and 223e6 < count(blip) < 225e6
    assert blip.blip.config.vision_config.image_size == 384 and blip.blip.config.text_config.vocab_size == 30524
    # 577 image tokens dominate: ~95% of the analytic training FLOPs are the ViT's
    flops = parts.blip_caption_flops(blip, batch=1, text_len=15)
    assert 3 * 2 * 86e6 * 577 < flops < 3 * 2 * 224e6 * 577

    blip2 = parts.blip2_opt_model("opt2.7b", meta)
    vit, lm = blip2.blip2.vision_model, blip2.blip2.language_model
    assert 3.70e9 < count(blip2) < 3.78e9 and count(vit) == 985_952_256 and 2.64e9 < count(lm) < 2.66e9
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
    assert vit.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16 and not vit.encoder.layers[0].mlp.fc1.weight.requires_grad


def test_analytic_flops_match_the_flop_counter_on_a_tiny_blip(parts):
    model = parts.blip_caption_model("tiny", torch.device("cpu")).train()
    size = model.blip.config.vision_config.image_size
    samples = {"image": torch.randn(2, 3, size, size), "text_input": parts.captions(2)}
    text_len = model.tokenize(samples["text_input"]).input_ids.shape[1]

    def step():
        model(samples)["loss"].backward()

    counted = parts.counted_flops(step)
    assert parts.blip_caption_flops(model, 2, text_len) == pytest.approx(counted, rel=0.05)


def test_failure_reason_is_the_last_error_line():
    launch = load("_gpu_check_launch")
    output = "INFO step 1\nTraceback (most recent call last):\n  File x\nValueError: bad shape\n"
    assert launch.failure_reason(1, output) == "exit 1: ValueError: bad shape"
    assert launch.failure_reason(2, "config error: run.amp: expected bool\n") == "exit 2: config error: run.amp: expected bool"
    assert launch.failure_reason(3, "just text\nlast words\n") == "exit 3: last words"
