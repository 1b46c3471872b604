"""The launcher checks of ``benchmarks/gpu_check.py``: vlft's own ``train.py`` /
``evaluate.py`` under ``python``, ``torchrun`` or with a DeepSpeed config, each a
subprocess in its own process group with a timeout; the result is read back from the
run folder (``log.jsonl``, ``config.yaml``, ``checkpoint_latest.pth``) and the log.

Training runs use the caption demo (projects/demo/caption_shapes.yaml, the tiny BLIP on
the synthetic shapes) with ``log_freq 1`` and no validation; a run passes when it exits
0, its log says what backend / strategy it used, and its losses are finite and fall
(mean of the last third below the mean of the first third).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOOKS = HERE / "_gpu_check_hooks.py"
DEMO = REPO / "projects" / "demo" / "caption_shapes.yaml"
RET_EVAL = REPO / "projects" / "blip2" / "eval" / "ret_coco_eval.yaml"
VQA_EVAL = REPO / "projects" / "blip2" / "eval" / "vqav2_zeroshot_opt_eval.yaml"


class CheckFailed(Exception):
    """The check ran and something was wrong (the message is the one-line reason)."""


class CheckSkipped(Exception):
    """The check cannot run on this machine (the message says why)."""


@dataclass
class Context:
    profile: Any  # gpu_check.Profile
    tmp: Path
    peak_tflops: Optional[float] = None
    timeout: int = 90
    worker_batch: List[str] = field(default_factory=list)  # worker checks one dry-run process measures
    worker_results: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    _lavis_root: Optional[Path] = None

    def env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()  # no launcher variables leak into the runs
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(HF_HUB_OFFLINE="1", PYTHONHASHSEED="0", OMP_NUM_THREADS=str(self.profile.threads),
                   PYTHONUNBUFFERED="1")
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
        if self.profile.device == "cpu":
            env["DS_ACCELERATOR"] = "cpu"
        env.update(extra or {})
        return env

    def lavis_root(self) -> Path:
        """Synthetic COCO / VQA files in LAVIS's layout, written once per run."""
        if self._lavis_root is None:
            from vlft.datasets.synthetic_lavis import write_shapes_lavis

            root = self.tmp / "lavis"
            n = self.profile.eval_images
            write_shapes_lavis(root, n_train=8, n_val=n, n_test=n, image_size=32)
            self._lavis_root = root
        return self._lavis_root


# ------------------------------------------------------------------------- subprocesses
def run_cmd(cmd: List[str], timeout: float, env: Dict[str, str]) -> Tuple[int, str]:
    """(exit code, stdout + stderr); on timeout the whole process group is killed."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: torchrun's ranks die with it
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise CheckFailed(f"timed out after {timeout:.0f} s; last output: {last_lines(out, 1)}")
    return proc.returncode, out


_ERROR = re.compile(r"^\s*(\w+\.)*\w*(Error|Exception|error:)|^config error|^error:")


def last_lines(output: str, n: int = 1) -> str:
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def failure_reason(code: int, output: str) -> str:
    """The last error line of a failed run's output (a traceback's last line), else its last line."""
    errors = [line.strip() for line in output.splitlines() if _ERROR.search(line)]
    return f"exit {code}: {errors[-1] if errors else last_lines(output)}"


def launch(ctx: Context, script: str, cfg: Path, options: List[str], nproc: int = 0,
           extra_env: Optional[Dict[str, str]] = None, entry: Optional[Path] = None) -> str:
    """Run ``script`` (or ``entry`` under torchrun) and return its output; CheckFailed if it fails.
    ``nproc`` 0: plain ``python``; N: ``torchrun --standalone --nproc_per_node=N``."""
    target = [str(entry or REPO / script), "--cfg-path", str(cfg), "--options", *options]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target]
    else:
        cmd = [sys.executable, *target]
    code, out = run_cmd(cmd, ctx.timeout, ctx.env(extra_env))
    (ctx.tmp / "logs").mkdir(parents=True, exist_ok=True)
    (ctx.tmp / "logs" / f"{Path(str(options[0]).split('=')[-1]).name}.log").write_text(out)
    if code != 0:
        raise CheckFailed(failure_reason(code, out))
    return out


def run_dir(output_dir: Path) -> Path:
    dirs = [p for p in output_dir.iterdir() if p.is_dir()] if output_dir.is_dir() else []
    if len(dirs) != 1:
        raise CheckFailed(f"expected one run folder in {output_dir}, found {len(dirs)}")
    return dirs[0]


def read_log(folder: Path) -> List[dict]:
    path = folder / "log.jsonl"
    if not path.is_file():
        raise CheckFailed(f"no log.jsonl in {folder}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expect(output: str, *needles: str) -> None:
    for needle in needles:
        if needle not in output:
            raise CheckFailed(f"the log lacks {needle!r}")


# ------------------------------------------------------------------------- training checks
def demo_options(ctx: Context, out: Path, amp: str = "bf16") -> List[str]:
    p = ctx.profile
    return [f"run.output_dir={out}", f"run.device={p.device}", f"run.amp={amp}", "run.max_epoch=1",
            f"run.batch_size_train={p.train_batch}", "run.num_workers=0", "run.validate_at_start=false",
            "run.valid_splits=[]", "run.test_splits=[]", "run.log_freq=1", "run.warmup_steps=1",
            "run.plot_curves=false", "run.seed=42",
            f"datasets.synthetic_shapes.build_info.annotations.train.num_samples={p.train_samples}"]


def falling_losses(folder: Path) -> Tuple[List[float], str]:
    """The per-step training losses; CheckFailed unless finite and falling."""
    train = [r for r in read_log(folder) if r.get("kind") == "train" and "loss" in r]
    losses = [float(r["loss"]) for r in train]
    if len(losses) < 3:
        raise CheckFailed(f"only {len(losses)} logged training steps")
    if not all(v == v and abs(v) != float("inf") for v in losses):
        raise CheckFailed(f"non-finite losses: {losses}")
    third = max(len(losses) // 3, 1)
    first, last = sum(losses[:third]) / third, sum(losses[-third:]) / third
    if not last < first:
        raise CheckFailed(f"losses did not fall: first third {first:.4f}, last third {last:.4f}")
    step_ms = 1e3 * float(train[-1].get("step_time", 0.0))
    return losses, f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps, {step_ms:.0f} ms/step"


def train_check(ctx: Context, name: str, amp: str = "bf16", extra: Tuple[str, ...] = (), nproc: int = 0,
                entry: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
                needles: Tuple[str, ...] = ()) -> Tuple[Path, str, str]:
    out_dir = ctx.tmp / name
    output = launch(ctx, "train.py", DEMO, demo_options(ctx, out_dir, amp) + list(extra), nproc=nproc,
                    extra_env=env, entry=entry)
    expect(output, *needles)
    folder = run_dir(out_dir)
    _, figure = falling_losses(folder)
    return folder, figure, output


def check_amp_bf16(ctx: Context) -> Dict[str, Any]:
    _, figure, _ = train_check(ctx, "amp_bf16_train", "bf16", needles=("with single on 1 process(es)",))
    return {"figure": f"bf16 autocast: {figure}"}


def check_amp_fp16(ctx: Context) -> Dict[str, Any]:
    import torch

    folder, figure, _ = train_check(ctx, "amp_fp16_gradscaler", "fp16")
    state = torch.load(folder / "checkpoint_latest.pth", weights_only=True, map_location="cpu")
    scaler = (state.get("strategy") or {}).get("scaler")
    if not scaler or "scale" not in scaler:
        raise CheckFailed("the checkpoint holds no GradScaler state: fp16 ran without loss scaling")
    return {"figure": f"fp16 + GradScaler (scale {float(scaler['scale']):g}): {figure}", "detail": {"scaler": scaler}}


def check_torchrun_1(ctx: Context) -> Dict[str, Any]:
    backend = ctx.profile.backend
    _, figure, _ = train_check(ctx, "torchrun_1rank", nproc=1, entry=HOOKS, env={"VLFT_GPU_CHECK_BACKEND": backend},
                               needles=(f"gpu_check: process group {backend}, world 1", "on 1 process(es)"))
    return {"figure": f"{backend}, 1 rank (group joined by the check's shim): {figure}"}


def check_torchrun_2(ctx: Context) -> Dict[str, Any]:
    import torch

    backend = ctx.profile.backend
    if backend == "nccl" and torch.cuda.device_count() < 2:
        raise CheckSkipped(f"{torch.cuda.device_count()} GPU visible; 2 ranks over NCCL need 2")
    batch = max(ctx.profile.train_batch // 2, 1)
    _, figure, _ = train_check(ctx, "torchrun_2ranks", nproc=2, extra=(f"run.batch_size_train={batch}",),
                               needles=("with ddp on 2 process(es)", f"({backend} on"))
    return {"figure": f"{backend}, 2 ranks, DDP: {figure}"}


def deepspeed_ready(ctx: Context) -> None:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise CheckSkipped("deepspeed is not installed (pip install -e '.[deepspeed]')")
    if ctx.profile.device == "cpu":
        ext = Path(ctx.env()["TORCH_EXTENSIONS_DIR"])
        if not list(ext.glob("deepspeed_shm_comm/*.so")):
            raise CheckSkipped(f"DeepSpeed's CPU comm op is not compiled in {ext} yet (a first start JIT-compiles "
                               "it for 30-100 s); run tests/runners/test_deepspeed.py once")


def deepspeed_check(ctx: Context, stage: int) -> Dict[str, Any]:
    deepspeed_ready(ctx)
    _, figure, _ = train_check(ctx, f"deepspeed_zero{stage}_bf16", "bf16",
                               extra=(f"run.deepspeed_config={{zero_optimization: {{stage: {stage}}}}}",),
                               needles=(f"ZeRO stage {stage}, bf16", "with deepspeed on 1 process(es)"))
    return {"figure": f"ZeRO-{stage} bf16: {figure}"}


# ------------------------------------------------------------------------- evaluation checks
def eval_options(ctx: Context, project: Path, out: Path) -> List[str]:
    """The project on its ``tiny`` model type, as tests/test_blip2_projects.py runs it."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(project)
    opts = [f"run.output_dir={out}", "model.model_type=tiny", "model.load_pretrained=false",
            "model.load_finetuned=false", f"run.cache_root={ctx.lavis_root()}", f"run.device={ctx.profile.device}",
            "run.distributed=false", "run.batch_size_eval=8", "run.num_workers=0", "run.amp=bf16"]
    opts += [f"model.{k}=null" for k in ("vit_pretrained", "qformer_init") if k in cfg.model]
    for name, ds in cfg.datasets.items():
        for split in ds.get("vis_processor") or {}:
            opts.append(f"datasets.{name}.vis_processor.{split}.image_size=32")
    return opts


def eval_check(ctx: Context, name: str, project: Path, options: List[str], metrics: Tuple[str, ...]) -> Dict[str, Any]:
    out_dir, probe = ctx.tmp / name, ctx.tmp / f"{name}.probe.jsonl"
    env = {"VLFT_PLUGINS": str(HOOKS), "VLFT_GPU_CHECK_PROBE": str(probe), "VLFT_GPU_CHECK_FORCE_AUTOCAST": "bf16"}
    launch(ctx, "evaluate.py", project, eval_options(ctx, project, out_dir) + options, extra_env=env)
    folder = run_dir(out_dir)
    evals = [r for r in read_log(folder) if str(r.get("kind", "")).startswith("eval/")]
    if not evals:
        raise CheckFailed("no evaluation was logged")
    values = {}
    for key in metrics:
        value = evals[-1].get(key)
        if not isinstance(value, (int, float)) or value != value or not 0 <= value <= 100:
            raise CheckFailed(f"metric {key} is {value!r}, expected a number in [0, 100]")
        values[key] = float(value)
    records = [json.loads(line) for line in probe.read_text().splitlines()] if probe.is_file() else []
    if not records:
        raise CheckFailed("the autocast probe saw no evaluation (plugin not loaded?)")
    shown = ", ".join(f"{k} {v:.1f}" for k, v in values.items())
    detail = {"metrics": values, "autocast": records}
    forced = [r for r in records if r["forced"]]
    if forced:
        return {"result": "WARN", "detail": detail, "figure": (
            f"{shown}; evaluate.py applied no autocast (run.amp=bf16 acts only in training and its validations), "
            "so the check entered bf16 autocast itself")}
    wrong = [r for r in records if r["dtype"] != "bfloat16"]
    if wrong:
        raise CheckFailed(f"evaluation ran under autocast {wrong[0]['dtype']}, expected bfloat16")
    return {"figure": f"{shown} (random tiny model, {ctx.profile.eval_images} images), bf16 autocast", "detail": detail}


def check_eval_retrieval(ctx: Context) -> Dict[str, Any]:
    return eval_check(ctx, "eval_retrieval_bf16", RET_EVAL, ["run.k_test=4"], ("txt_r1", "img_r1"))


def check_eval_vqa(ctx: Context) -> Dict[str, Any]:
    opts = ["run.num_beams=1", "run.max_len=3"] if ctx.profile.device == "cpu" else []
    return eval_check(ctx, "eval_vqa_bf16", VQA_EVAL, opts, ("overall",))


LAUNCH_CHECKS: Dict[str, Callable[[Context], Dict[str, Any]]] = {
    "amp_bf16_train": check_amp_bf16,
    "amp_fp16_gradscaler": check_amp_fp16,
    "torchrun_1rank": check_torchrun_1,
    "torchrun_2ranks": check_torchrun_2,
    "deepspeed_zero2_bf16": lambda ctx: deepspeed_check(ctx, 2),
    "deepspeed_zero3_bf16": lambda ctx: deepspeed_check(ctx, 3),
    "eval_retrieval_bf16": check_eval_retrieval,
    "eval_vqa_bf16": check_eval_vqa,
}
