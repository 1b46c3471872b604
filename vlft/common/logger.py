"""Run logging: rank-0 console lines with progress and ETA, metrics as JSON lines,
optional TensorBoard / Weights & Biases sinks, and curves as a PNG at the end."""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from vlft.common import dist
from vlft.common.utils import human_bytes

logger = logging.getLogger("vlft")


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging on rank 0 only; other ranks print warnings and errors."""
    root = logging.getLogger()
    if getattr(root, "_vlft_configured", False):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if dist.get_rank() == 0 and int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)
    root._vlft_configured = True


class SmoothedValue:
    """Running window mean plus global mean, as the detection codebases print them."""

    def __init__(self, window: int = 20):
        self.values: deque = deque(maxlen=window)
        self.total, self.count = 0.0, 0

    def update(self, value: float) -> None:
        self.values.append(value)
        self.total += value
        self.count += 1

    @property
    def avg(self) -> float:
        return sum(self.values) / max(len(self.values), 1)

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)


def fmt_seconds(s: float) -> str:
    return str(datetime.timedelta(seconds=int(s)))


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
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {f"{kind}/{k}": v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


class ProgressLogger:
    """Collects per-step values and prints one line every ``log_freq`` steps."""

    def __init__(self, total_steps: int, log_freq: int, sinks: MetricSinks, device: torch.device):
        self.total, self.log_freq, self.sinks, self.device = total_steps, max(log_freq, 1), sinks, device
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
        for k, tensors in self.pending.items():
            mean = torch.stack([t.float() for t in tensors]).mean().item()
            self.meters[k].update(mean)
            values[k] = mean
        self.pending.clear()
        done = step + 1 - (self.start_step or 0)
        rate = (time.time() - self.start_time) / max(done, 1)
        eta = fmt_seconds(rate * (self.total - step - 1))
        if self.device.type == "cuda":
            mem = f"  mem {human_bytes(torch.cuda.max_memory_allocated(self.device))}"
        else:  # peak resident memory of this process (Linux reports KiB)
            import resource

            mem = f"  rss {human_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}"
        losses = "  ".join(f"{k} {v:.4f} ({self.meters[k].global_avg:.4f})" for k, v in values.items())
        logger.info(
            "step %d/%d  eta %s  %s  lr %.3e  time %.3fs  data %.3fs%s",
            step + 1, self.total, eta, losses, self.lr, self.meters["time"].avg, self.meters["data"].avg, mem,
        )
        self.sinks.write("train", step + 1, {**values, "lr": self.lr, "step_time": self.meters["time"].avg})


def plot_curves(jsonl: Path, out_png: Path) -> Optional[Path]:
    """Loss, learning-rate and evaluation-metric curves from ``log.jsonl``."""
    if not jsonl.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"].startswith("eval/")]
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")})
    # floats only (counts are ints); agg_metrics only where it is the sole metric
    metric_keys = sorted({(r["kind"], k) for r in evals for k, v in r.items()
                          if k not in ("kind", "step", "time") and isinstance(v, float)})
    if any(k != "agg_metrics" for _, k in metric_keys):
        metric_keys = [(kind, k) for kind, k in metric_keys if k != "agg_metrics"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k in loss_keys:
        axes[0].plot([r["step"] for r in train if k in r], [r[k] for r in train if k in r], label=k)
    axes[0].set_title("training loss")
    axes[1].plot([r["step"] for r in train], [r.get("lr", 0.0) for r in train])
    axes[1].set_title("learning rate")
    for kind, k in metric_keys:
        pts = [(r["step"], r[k]) for r in evals if r["kind"] == kind and k in r]
        axes[2].plot(*zip(*pts), marker="o", label=f"{kind[5:]} {k}")
    axes[2].set_title("evaluation metrics")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
