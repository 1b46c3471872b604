"""Run logging: rank-0 console lines with progress and ETA (training and evaluation),
metrics as strict JSON lines, optional TensorBoard / Weights & Biases sinks. Curves
are drawn by :mod:`vlft.common.curves`; third-party noise goes to the debug log
(:mod:`vlft.common.debug_log`)."""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

import torch

from vlft.common import dist
from vlft.common.curves import plot_curves  # noqa: F401  (its old home)
from vlft.common.debug_log import ConsoleFilter
from vlft.common.utils import human_bytes

logger = logging.getLogger("vlft")


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a notebook's or pytest's capture
    may replace it between runs in one process)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging on rank 0 only; other ranks print warnings and errors."""
    root = logging.getLogger()
    if getattr(root, "_vlft_configured", False):
        return
    handler = _CurrentStdout()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(ConsoleFilter())
    root.addHandler(handler)
    root.setLevel(level if dist.get_rank() == 0 and int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    root._vlft_configured = True


class SmoothedValue:
    """Running window mean plus global mean, as the detection codebases print them.
    Non-finite values (a skipped step's NaN loss) are counted but kept out of both means."""

    def __init__(self, window: int = 20):
        self.values: deque = deque(maxlen=window)
        self.total, self.count, self.nonfinite = 0.0, 0, 0

    def update(self, value: float) -> None:
        if not math.isfinite(value):
            self.nonfinite += 1
            return
        self.values.append(value)
        self.total += value
        self.count += 1

    @property
    def avg(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else math.nan


def fmt_seconds(s: float) -> str:
    return str(datetime.timedelta(seconds=int(s)))


def fmt_short(s: float) -> str:
    """``1h02m``, ``1m20s``, ``45s``."""
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN), tensors as numbers."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricSinks:
    """Where metrics go: ``log.jsonl`` in the run folder, plus TensorBoard / W&B if asked."""

    def __init__(self, run_dir: Path, backends: Iterable[str] = (), wandb_project: Optional[str] = None, config: Optional[dict] = None):
        self.enabled = dist.is_main_process()
        self.path = Path(run_dir) / "log.jsonl"
        self.tb = self.wandb = None
        if not self.enabled:
            return
        backends = set(backends)
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        if "wandb" in backends:
            import wandb  # credentials: WANDB_API_KEY or `wandb login`, never the config

            self.wandb = wandb.init(project=wandb_project or "vlft", dir=str(run_dir), config=config)

    def write(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = json_safe({"kind": kind, "step": step, "time": round(time.time(), 3), **values})
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        scalars = {f"{kind}/{k}": v for k, v in record.items()
                   if k not in ("kind", "step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(scalars, step=step)

    def truncate_after(self, step: int) -> int:
        """Drop the records past ``step`` (a resumed run replays them); atomic, rank 0.
        Returns how many were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines()
        keep = [line for line in lines if line.strip() and _step_of(line) <= step]
        dropped = sum(1 for line in lines if line.strip()) - len(keep)
        if dropped:
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        return dropped

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except ValueError:  # a torn last line of a killed run
        return math.inf


class ProgressLogger:
    """Collects per-step values and prints one line every ``log_freq`` steps.
    ``skipped`` returns this rank's count of unreadable training samples so far; the
    line and ``log.jsonl`` show the sum over ranks."""

    def __init__(self, total_steps: int, log_freq: int, sinks: MetricSinks, device: torch.device,
                 skipped: Optional[Callable[[], int]] = None):
        self.total, self.log_freq, self.sinks, self.device = total_steps, max(log_freq, 1), sinks, device
        self.skipped = skipped
        self.meters: Dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.pending: Dict[str, list] = defaultdict(list)  # device tensors, read at log time (no per-step sync)
        self.start_time = time.time()
        self.start_step: Optional[int] = None

    def update(self, step: int, losses: Dict[str, torch.Tensor], lr: float, step_time: float, data_time: float) -> None:
        if self.start_step is None:
            self.start_step = step
        for k, v in losses.items():
            self.pending[k].append(v.detach() if torch.is_tensor(v) else torch.tensor(float(v)))
        self.meters["time"].update(step_time)
        self.meters["data"].update(data_time)
        self.lr = lr
        if (step + 1) % self.log_freq == 0 or step + 1 == self.total:
            self.flush(step)

    def flush(self, step: int) -> None:
        values: Dict[str, float] = {}
        texts = []
        for k, tensors in self.pending.items():
            stacked = torch.stack([t.float().reshape(()) for t in tensors])
            finite = torch.isfinite(stacked)
            n_bad = int((~finite).sum())
            # a skipped (non-finite) step stays out of the interval's mean and the running average
            mean = stacked[finite].mean().item() if n_bad < len(tensors) else math.nan
            self.meters[k].update(mean)
            values[k] = mean
            note = "" if not n_bad else " (skipped)" if n_bad == len(tensors) else f" ({n_bad} non-finite skipped)"
            texts.append(f"{k} {mean:.4f}{note} ({self.meters[k].global_avg:.4f})")
        self.pending.clear()
        done = step + 1 - (self.start_step or 0)
        rate = (time.time() - self.start_time) / max(done, 1)
        eta = fmt_seconds(rate * (self.total - step - 1))
        if self.device.type == "cuda":
            mem = f"  mem {human_bytes(torch.cuda.max_memory_allocated(self.device))}"
        else:  # peak resident memory of this process (Linux reports KiB)
            import resource

            mem = f"  rss {human_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}"
        extra: Dict[str, Any] = {}
        skipped = ""
        if self.skipped is not None:
            total = int(dist.all_reduce_sum(torch.tensor([self.skipped()], dtype=torch.long,
                                                         device=_reduce_device(self.device))).item())
            extra["skipped_samples"] = total
            skipped = f"  skipped {total}" if total else ""
        logger.info(
            "step %d/%d  eta %s  %s  lr %.3e  time %.3fs  data %.3fs%s%s",
            step + 1, self.total, eta, "  ".join(texts), self.lr, self.meters["time"].avg, self.meters["data"].avg,
            mem, skipped,
        )
        self.sinks.write("train", step + 1, {**values, "lr": self.lr, "step_time": self.meters["time"].avg, **extra})


def _reduce_device(device: torch.device) -> torch.device:
    # NCCL reduces CUDA tensors only; gloo CPU ones
    return device if device.type == "cuda" and dist.is_dist() else torch.device("cpu")


class EvalProgress:
    """``eval coco/val 120/500 batches, eta 1m20s`` on rank 0, every ``every_s`` seconds
    (and a closing line with the time taken). ``total`` None: a stream of unknown length."""

    every_s = 10.0

    def __init__(self, name: str, total: Optional[int]):
        self.name, self.total = name, total
        self.start = self.last = time.time()
        self.done = 0
        self.enabled = dist.is_main_process()

    def tick(self) -> None:
        self.done += 1
        now = time.time()
        if not self.enabled or now - self.last < self.every_s:
            return
        self.last = now
        if self.total:
            eta = (now - self.start) / self.done * max(self.total - self.done, 0)
            logger.info("eval %s %d/%d batches, eta %s", self.name, self.done, self.total, fmt_short(eta))
        else:
            logger.info("eval %s %d batches, %s", self.name, self.done, fmt_short(now - self.start))

    def close(self) -> None:
        if self.enabled and time.time() - self.start >= self.every_s:
            logger.info("eval %s: %d batches in %s", self.name, self.done, fmt_short(time.time() - self.start))
