"""Evaluation for the runner: every dataset that has one of the asked splits, on every
rank (sharded), scored on rank 0, with progress lines, unreadable samples counted
and summed over ranks, and the configured precision (``run.amp``) also when only
evaluating (``evaluate.py``, where no training strategy is built)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, List

import torch

from vlft.common import dist
from vlft.common.debug_log import stderr_to_debug_log
from vlft.common.logger import EvalProgress
from vlft.runners.data import batch_len, eval_loader
from vlft.runners.strategies import amp_dtype

logger = logging.getLogger(__name__)


def move_to_device(samples: Any, device: torch.device) -> Any:
    if torch.is_tensor(samples):
        return samples.to(device, non_blocking=True)
    if isinstance(samples, dict):
        return {k: move_to_device(v, device) for k, v in samples.items()}
    if isinstance(samples, (list, tuple)) and samples and torch.is_tensor(samples[0]):
        return type(samples)(move_to_device(v, device) for v in samples)
    return samples


class OnDevice:
    """Wraps an evaluation loader: counts unreadable samples, moves batches to the
    device, and reports progress every few seconds."""

    def __init__(self, loader, device, name: str = "", progress: bool = True):
        self.loader, self.device, self.skipped, self.seen = loader, device, 0, 0
        self.name, self.progress = name, progress

    def __iter__(self):
        try:
            total = len(self.loader)
        except TypeError:  # a stream of unknown length
            total = None
        bar = EvalProgress(self.name, total) if self.progress else None
        for batch in self.loader:
            n = batch.pop("n_skipped", 0) if isinstance(batch, dict) else 0
            self.skipped += n
            self.seen += n + (batch_len(batch) if batch else 0)
            if bar:
                bar.tick()
            if batch:
                yield move_to_device(batch, self.device)
        if bar:
            bar.close()

    def __len__(self):
        return len(self.loader)


def eval_autocast(run_cfg, strategy, device: torch.device):
    """The training strategy's autocast, or (evaluate-only) the one ``run.amp`` asks for."""
    if strategy is not None:
        return strategy.autocast()
    dtype = amp_dtype(run_cfg.amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def summed_over_ranks(skipped: int, seen: int, device: torch.device) -> tuple:
    """``(skipped, seen)`` summed over the processes (NCCL needs the tensor on the GPU)."""
    counts = torch.tensor([skipped, seen], dtype=torch.long)
    if dist.is_dist() and device.type == "cuda":
        counts = counts.to(device)
    return tuple(int(x) for x in dist.all_reduce_sum(counts).tolist())


def _cached_loader(runner, key: str, dataset):
    """One evaluation loader per split for the runner's life: its (persistent) workers
    start once, not at every validation."""
    loaders = runner.eval_loaders
    cached = loaders.get(key)
    if cached is None or cached.dataset is not dataset:
        run = runner.run_cfg
        cached = loaders[key] = eval_loader(dataset, run.batch_size_eval, run.num_workers, dist.get_rank(),
                                            dist.get_world_size(), shard=run.get("use_dist_eval_sampler", True))
    return cached


def run_evaluation(runner, splits: List[str], tag: str, epoch: Any = None) -> Dict[str, Dict[str, float]]:
    """Evaluate every dataset of ``runner`` that has one of ``splits``; metrics keyed ``dataset/split``."""
    module = runner.strategy.module if runner.strategy else runner.model
    module.eval()
    run, out = runner.run_cfg, {}
    phase = "test" if tag == "test" else "val"
    for ds_name, ds_splits in runner.datasets.items():
        for split in splits:
            if split not in ds_splits:
                continue
            key = f"{ds_name}/{split}"
            loader = _cached_loader(runner, key, ds_splits[split])
            batches = OnDevice(loader, runner.device, name=key)
            with eval_autocast(run, runner.strategy, runner.device):
                results = runner.task.evaluation(module, batches, dataset=ds_splits[split])
            skipped, seen = summed_over_ranks(batches.skipped, batches.seen, runner.device)
            runner.skip_totals[key] = (skipped, seen)
            if skipped:
                logger.warning("%s: %d of %d sample(s) could not be read and were skipped", key, skipped, seen)
            metrics = None
            if dist.is_main_process():
                name = f"{ds_name}_{split}_{epoch if epoch is not None else 'final'}"
                with stderr_to_debug_log():  # Java tokenizers and scorers print to stderr
                    metrics = runner.task.after_evaluation(results, split_name=split, epoch=epoch,
                                                           output_dir=runner.run_dir, dataset=ds_splits[split])
                runner.task.save_results(results, runner.run_dir, name)
            metrics = dist.broadcast_object(metrics)
            out[key] = metrics
            runner.sinks.write(f"eval/{key}", runner.progress.step, {**metrics, "skipped_samples": skipped, "phase": phase})
            logger.info("%s %s: %s", tag, key,
                        "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    if runner.strategy:
        runner.strategy.model.train()
    return out


def skip_summary(totals: Dict[str, tuple]) -> str:
    """``train 3 of 12288 (0.02%), coco/val 0 of 5000``."""
    parts = []
    for name, (skipped, seen) in totals.items():
        share = f" ({100 * skipped / seen:.2f}%)" if skipped and seen else ""
        parts.append(f"{name} {skipped} of {seen}{share}")
    return ", ".join(parts)
