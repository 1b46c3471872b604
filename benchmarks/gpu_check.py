"""Does vlft work on a GPU? One command, one table, under 8 minutes on one GPU.

    python benchmarks/gpu_check.py                      # on a machine with NVIDIA GPU(s)
    python benchmarks/gpu_check.py --json out.json      # the table also as JSON
    python benchmarks/gpu_check.py --only throughput_blip_base,loader_wait_share
    python benchmarks/gpu_check.py --dry-run            # every check on the CPU, tiny shapes (~1 min)

Checks, in order (one row each; ``check | result | figure | seconds``):

==========================  ==================================================================
amp_bf16_train              ``train.py`` on the caption demo (tiny BLIP), ``run.amp=bf16``:
                            losses finite and falling
amp_fp16_gradscaler         the same with ``run.amp=fp16``: the checkpoint holds a GradScaler state
torchrun_1rank              ``torchrun --nproc_per_node=1``; a shim joins an NCCL group first (vlft
                            joins one only for 2+ ranks), so vlft's collectives run over NCCL
torchrun_2ranks             ``torchrun --nproc_per_node=2``, NCCL, DDP (SKIP with < 2 GPUs)
deepspeed_zero2_bf16        ``run.deepspeed_config`` ZeRO stage 2, ``run.amp=bf16``
deepspeed_zero3_bf16        ZeRO stage 3, bf16
eval_retrieval_bf16         ``evaluate.py`` on projects/blip2/eval/ret_coco_eval.yaml (tiny type)
eval_vqa_bf16               ``evaluate.py`` on projects/blip2/eval/vqav2_zeroshot_opt_eval.yaml
throughput_blip_base        BLIP-base (ViT-B/16 at 384 px + BERT-base decoder) training samples/s
                            in bf16 autocast, and model FLOPs utilisation
blip2_opt2.7b_lora_memory   BLIP-2 (EVA ViT-g fp16 frozen, Q-Former, OPT-2.7B bf16 frozen + LoRA
                            r16 on q_proj/v_proj) at batch 16: peak GiB and step time
loader_wait_share           share of the step time spent waiting for data: blip_image_train at
                            384 px from synthetic PNGs, 8 workers, feeding the BLIP-base step
==========================  ==================================================================

Results: PASS; FAIL, with a one-line reason in the figure column; SKIP, with the reason;
WARN: it ran, but not as configured or off its target (the loader waiting over 10% of
the step on a GPU), the figure says how. Each check is isolated: the launcher checks are
subprocesses of vlft's own ``train.py`` / ``evaluate.py`` / ``torchrun``, the
measurements run in worker subprocesses of this script, each has a timeout, the whole
run has a budget (``--budget``, 470 s), and a failing check never stops the others.
Progress goes to stderr, the table to stdout; the exit status is 1 when a check failed.

The evaluation checks record, from inside the evaluation, whether autocast was on
(``_gpu_check_hooks.py`` as a vlft plugin). ``evaluate.py`` builds no training strategy,
and vlft's runner then evaluates without autocast, whatever ``run.amp`` says (LAVIS's
runner does the same; its BLIP-2 models autocast their ViT inside). The check then
enters bf16 autocast itself, so the models' bf16 evaluation paths (those a training
run's validation takes with ``amp: bf16``) still run, and reports WARN.

``--dry-run``: the same checks on the CPU with tiny shapes (gloo instead of NCCL, bf16
autocast on the CPU, 2 gloo ranks on torchrun_2ranks), so that this script is exercised
by the tests (tests/test_gpu_check.py). DeepSpeed runs there too (``DS_ACCELERATOR=cpu``),
unless its CPU communication op has not been compiled yet (a first start JIT-compiles it
for 30-100 s): then it is a SKIP that says so. Figures of a dry run are not GPU figures.

Nothing is downloaded (``HF_HUB_OFFLINE=1``): every model is random init, text uses the
synthetic shapes' tokenizers, data is written by ``vlft.datasets.synthetic_lavis``.
Threads: ``OMP_NUM_THREADS`` 4 per process on a GPU machine, 1 in a dry run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the helper modules next to this file

from _gpu_check_launch import (LAUNCH_CHECKS, CheckFailed, CheckSkipped, Context, failure_reason,  # noqa: E402
                               run_cmd)

RESULT_TAG = "GPU_CHECK_RESULT "


@dataclass(frozen=True)
class Profile:
    """Sizes and limits of one mode; ``gpu`` is the real check, ``dry-run`` the CPU one."""

    name: str
    device: str
    backend: str
    threads: int
    train_samples: int  # caption demo: samples of one epoch, and the batch
    train_batch: int
    eval_images: int
    blip_size: str  # "base" | "tiny"
    blip_batch: int
    blip_warmup: int
    blip_steps: int
    blip2_size: str  # "opt2.7b" | "tiny"
    lora_batch: int
    lora_steps: int
    loader_workers: int
    loader_images: int  # PNGs written (each is read several times per pass)
    loader_image_px: int
    loader_px: int
    loader_batch: int
    loader_warmup: int
    loader_steps: int
    max_loader_wait: Optional[float]  # WARN above this share (None: report only)
    timeouts: Dict[str, int] = field(default_factory=dict)


GPU = Profile("gpu", "cuda", "nccl", 4, train_samples=512, train_batch=32, eval_images=32,
              blip_size="base", blip_batch=32, blip_warmup=3, blip_steps=20, blip2_size="opt2.7b", lora_batch=16,
              lora_steps=3, loader_workers=8, loader_images=160, loader_image_px=480, loader_px=384, loader_batch=32,
              loader_warmup=5, loader_steps=40, max_loader_wait=0.10,
              timeouts={"deepspeed_zero2_bf16": 120, "deepspeed_zero3_bf16": 120, "throughput_blip_base": 120,
                        "blip2_opt2.7b_lora_memory": 150, "loader_wait_share": 120})
DRY = Profile("dry-run", "cpu", "gloo", 1, train_samples=64, train_batch=8, eval_images=8,
              blip_size="tiny", blip_batch=8, blip_warmup=1, blip_steps=3, blip2_size="tiny", lora_batch=16,
              lora_steps=2, loader_workers=2, loader_images=16, loader_image_px=64, loader_px=32, loader_batch=8,
              loader_warmup=2, loader_steps=4, max_loader_wait=None,
              timeouts={"deepspeed_zero2_bf16": 150, "deepspeed_zero3_bf16": 150})
DEFAULT_TIMEOUT = 90


@dataclass
class Result:
    check: str
    result: str  # PASS | FAIL | SKIP | WARN
    figure: str
    seconds: Optional[float]  # a worker check's own time (see worker_check); else wall time
    detail: Dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- worker checks
def worker_check(name: str) -> Callable[[Context], Dict[str, Any]]:
    """A check measured inside a fresh process of this script (``--_worker name``). In a
    dry run one worker process measures every pending worker check (imports are most
    of a tiny check's time); on a GPU each gets its own process (clean peak memory, and
    a CUDA error cannot leak into the next)."""

    def check(ctx: Context) -> Dict[str, Any]:
        if name not in ctx.worker_results:
            batch = [n for n in ctx.worker_batch if n not in ctx.worker_results] if ctx.profile.device == "cpu" else []
            names = batch if name in batch else [name]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", ",".join(names), "--mode",
                   ctx.profile.name, "--_workdir", str(ctx.tmp / "workers")]
            if ctx.peak_tflops:
                cmd += ["--peak-tflops", str(ctx.peak_tflops)]
            t0 = time.perf_counter()
            code, output = run_cmd(cmd, ctx.timeout * len(names), ctx.env())
            wall, measured = time.perf_counter() - t0, 0.0
            for line in output.splitlines():
                if line.startswith(RESULT_TAG):
                    out = json.loads(line[len(RESULT_TAG):])
                    measured += out["seconds"]
                    ctx.worker_results[out.pop("check")] = out
            if name not in ctx.worker_results:
                raise CheckFailed(f"worker exited {code} without a result: {failure_reason(code, output)}")
            ctx.worker_results[name]["seconds"] += wall - measured  # the process start counts to this one
        return ctx.worker_results[name]

    return check


def measure(name: str, p: "Profile", device, workdir: Path, peak_tflops: Optional[float]) -> Dict[str, Any]:
    import torch

    import _gpu_check_parts as parts

    if name == "throughput_blip_base":
        peak = ("--peak-tflops", peak_tflops) if peak_tflops else None
        if peak is None and device.type == "cuda":
            peak = parts.peak_bf16_tflops(torch.cuda.get_device_name(device))
        return parts.throughput(p, device, peak)
    if name == "blip2_opt2.7b_lora_memory":
        return parts.lora_memory(p, device)
    if name == "loader_wait_share":
        out = parts.loader_wait(p, device, workdir / name)
        share = out.pop("wait_share")
        if p.max_loader_wait is not None and share > p.max_loader_wait:
            out.update(result="WARN", figure=f"loader-bound: {out['figure']} (target <= {100 * p.max_loader_wait:.0f}%)")
        return out
    raise ValueError(f"unknown worker check {name!r}")


def run_worker(names: List[str], mode: str, workdir: Path, peak_tflops: Optional[float]) -> int:
    """Body of ``--_worker``: each measurement's result as one tagged JSON line (a failed
    one too, so the next still runs)."""
    import torch

    import _gpu_check_parts as parts

    p = GPU if mode == "gpu" else DRY
    torch.set_num_threads(p.threads)
    device = torch.device(p.device)
    for name in names:
        t0 = time.perf_counter()
        try:
            out = measure(name, p, device, workdir, peak_tflops)
        except parts.Skip as why:
            out = {"result": "SKIP", "figure": str(why)}
        except Exception as err:  # reported in the table; the traceback goes to the log
            import traceback

            traceback.print_exc()
            out = {"result": "FAIL", "figure": f"{type(err).__name__}: {err}"}
        out.update(check=name, seconds=time.perf_counter() - t0)
        print(RESULT_TAG + json.dumps(out), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


WORKER_CHECKS = ["throughput_blip_base", "blip2_opt2.7b_lora_memory", "loader_wait_share"]
CHECKS: Dict[str, Callable[[Context], Dict[str, Any]]] = {**LAUNCH_CHECKS, **{n: worker_check(n) for n in WORKER_CHECKS}}
CHECK_NAMES = list(CHECKS)


# ------------------------------------------------------------------------- orchestration
def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_checks(profile: Profile, names: List[str], budget: float, peak_tflops: Optional[float], tmp: Path,
               skip: Sequence[str] = ()) -> List[Result]:
    ctx = Context(profile=profile, tmp=tmp, peak_tflops=peak_tflops,
                  worker_batch=[n for n in names if n in WORKER_CHECKS and n not in skip])
    start, results = time.perf_counter(), []
    for i, name in enumerate(names, 1):
        left = budget - (time.perf_counter() - start)
        print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if name in skip:
            res = Result(name, "SKIP", "skipped by --skip", 0.0)
        elif left < 15:
            res = Result(name, "SKIP", f"time budget of {budget:.0f} s spent", 0.0)
        else:
            ctx.timeout = int(min(profile.timeouts.get(name, DEFAULT_TIMEOUT), left))
            try:
                out = CHECKS[name](ctx)
                res = Result(name, out.get("result", "PASS"), one_line(out["figure"]), out.get("seconds"),
                             out.get("detail", {}))
            except CheckSkipped as why:
                res = Result(name, "SKIP", one_line(why), None)
            except CheckFailed as why:
                res = Result(name, "FAIL", one_line(why), None)
            except Exception as err:  # a broken check must not stop the others
                res = Result(name, "FAIL", one_line(f"{type(err).__name__}: {err}"), None)
        res.seconds = round(time.perf_counter() - t0 if res.seconds is None else res.seconds, 1)
        print(f"    -> {res.result} ({res.seconds:.1f} s) {res.figure}", file=sys.stderr, flush=True)
        results.append(res)
    return results


def format_table(results: List[Result]) -> str:
    rows = [("check", "result", "figure", "seconds")] + [(r.check, r.result, r.figure, f"{r.seconds:.1f}") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    line = lambda row: "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]),
                                  row[3].rjust(widths[3])]).rstrip()
    return "\n".join([line(rows[0]), line(["-" * w for w in widths]), *map(line, rows[1:])])


def environment(profile: Profile) -> Dict[str, Any]:
    import platform
    from importlib import metadata

    import torch

    info: Dict[str, Any] = {"mode": profile.name, "python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    for package in ("transformers", "peft", "deepspeed"):
        try:  # the version without the import (deepspeed's import alone takes seconds)
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", "--cpu", action="store_true", help="every check on the CPU with tiny shapes")
    parser.add_argument("--json", help="also write the table (and details) as JSON to this path")
    parser.add_argument("--only", help="comma-separated check names (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated check names to report as SKIP")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run (default 470)")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s for MFU (default: from the GPU name)")
    parser.add_argument("--keep", help="keep the run folders under this directory (default: a temporary one)")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="gpu", help=argparse.SUPPRESS)
    parser.add_argument("--_workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args._worker:
        return run_worker(args._worker.split(","), args.mode, Path(args._workdir), args.peak_tflops)

    names = CHECK_NAMES if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    skip = [n.strip() for n in args.skip.split(",") if n.strip()]
    unknown = [n for n in names + skip if n not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {unknown}; known: {', '.join(CHECK_NAMES)}")
    profile = DRY if args.dry_run else GPU
    import torch

    if profile is GPU and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run with --dry-run for the CPU version of every check",
              file=sys.stderr)
        return 2
    torch.set_num_threads(profile.threads)
    env = environment(profile)
    print(f"gpu_check {profile.name}: {json.dumps(env)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        results = run_checks(profile, names, args.budget, args.peak_tflops, Path(args.keep), skip)
    else:
        with tempfile.TemporaryDirectory(prefix="vlft_gpu_check_") as tmp:
            results = run_checks(profile, names, args.budget, args.peak_tflops, Path(tmp), skip)
    total = time.perf_counter() - t0
    print(format_table(results))
    print(f"{profile.name}: {sum(r.result == 'PASS' for r in results)} passed, "
          f"{sum(r.result == 'FAIL' for r in results)} failed, {sum(r.result == 'SKIP' for r in results)} skipped, "
          f"{sum(r.result == 'WARN' for r in results)} warned in {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "total_seconds": round(total, 1),
                                               "checks": [asdict(r) for r in results]}, indent=2) + "\n")
    return 1 if any(r.result == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
