"""How long does one AdamW step take with each of torch's kernels (``run.optimizer_impl``)?

    python benchmarks/optimizer_step.py --model blip_caption --model-type tiny --threads 1

The model is built from its default YAML (random weights; the demo's model by default)
with the runner's parameter groups (``vlft.runners.optim.build_optimizer``), every
trainable parameter gets a fixed random gradient, and the three kernels (single-tensor,
foreach, fused) take turns: ``--rounds`` rounds of ``--steps`` timed steps each, after a
warm-up. Printed: the median ms per step of each kernel, its ratio to single-tensor
(torch's default on CPU before vlft chose), and the largest difference of the weights
after the same steps from the single-tensor ones (the kernels round differently).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from vlft.models import load_model  # noqa: E402
from vlft.runners.optim import build_optimizer  # noqa: E402

IMPLS = ("single", "foreach", "fused")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="blip_caption")
    p.add_argument("--model-type", default="tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=50, help="timed steps per round and kernel")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = load_model(a.model, a.model_type)
    params = [p for p in base.parameters() if p.requires_grad]
    grads = [torch.randn_like(p) * 1e-2 for p in params]
    print(f"{a.model} '{a.model_type}': {len(params)} trainable tensors, {sum(p.numel() for p in params) / 1e6:.2f}M "
          f"parameters; torch {torch.__version__}, {a.threads} thread(s)")
    models, opts = {}, {}
    for impl in IMPLS:
        models[impl] = copy.deepcopy(base)
        run = OmegaConf.create({"init_lr": 1e-4, "weight_decay": 0.05, "beta2": 0.999, "optimizer_impl": impl})
        opts[impl] = build_optimizer(models[impl], run)
        for p, g in zip((p for p in models[impl].parameters() if p.requires_grad), grads):
            p.grad = g.clone()
        for _ in range(5):  # warm-up: state allocated, kernels loaded
            opts[impl].step()
    times = {impl: [] for impl in IMPLS}
    for _ in range(a.rounds):
        for impl in IMPLS:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                opts[impl].step()
            times[impl].append((time.perf_counter() - t0) / a.steps)
    ref = dict(models["single"].named_parameters())
    single = statistics.median(times["single"])
    print(f"{'kernel':8s} {'ms/step':>8s} {'vs single':>9s} {'max |w - w_single|':>19s}")
    for impl in IMPLS:
        med = statistics.median(times[impl])
        diff = max((p - ref[n]).abs().max().item() for n, p in models[impl].named_parameters())
        print(f"{impl:8s} {med * 1e3:8.3f} {med / single:9.3f} {diff:19.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
