"""The CPU benchmarks still run (a few steps each), so that they cannot rot."""
import subprocess
import sys

import pytest

from tests.helpers import REPO, subprocess_env

RUNS = [
    ["benchmarks/blip_caption_train.py", "--hidden-size", "64", "--num-layers", "1", "--image-size", "32",
     "--steps", "1", "--warmup", "1", "--trials", "1", "--batch-size", "2"],
    ["benchmarks/optimizer_step.py", "--steps", "2", "--rounds", "1"],
    ["benchmarks/runner_overhead.py", "--steps", "3", "--warmup", "1", "--trials", "1", "--num-batches", "2",
     "--batch-size", "4"],
    ["benchmarks/lm_loss.py", "--batch", "2", "--length", "16", "--steps", "1"],
    # vlft's side only: LAVIS 1.0.2 needs its own environment (transformers 4.26)
    ["benchmarks/vs_lavis.py", "--hidden-size", "64", "--num-layers", "1", "--image-size", "32", "--batch-size", "2",
     "--blip2-size", "tiny", "--trials", "1", "--steps", "1", "--warmup", "0"],
]


@pytest.mark.parametrize("args", RUNS, ids=[r[0].split("/")[1] for r in RUNS])
def test_benchmark_runs(args):
    out = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    expected = {"optimizer_step.py": "fused", "runner_overhead.py": "bit-identical: True", "blip_caption_train.py": "vlft sdpa",
                "lm_loss.py": "qwen2.5-0.5b/4", "vs_lavis.py": "vlft sdpa"}
    assert expected[args[0].split("/")[1]] in out.stdout, out.stdout
