"""Tasks: what a step computes and how predictions become metrics.

A task never calls ``backward()`` or ``optimizer.step()``: the runner's strategy
does. ``train_step`` returns the loss dict; ``valid_step`` returns per-sample
results; ``after_evaluation`` turns the results gathered from every rank into a
metrics dict whose ``agg_metrics`` picks the best checkpoint.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import torch

from vlft.common import dist
from vlft.common.registry import registry

logger = logging.getLogger(__name__)


class BaseTask:
    #: extra ``run:`` keys this task reads, with their defaults (validated with the rest)
    RUN_OPTIONS: Dict[str, Any] = {}
    #: the key in each result dict that identifies a sample (used to de-duplicate)
    result_key: str = "instance_id"

    def __init__(self, **options: Any):
        self.options = options

    #: the ``run:`` section the task was set up from (``run.cache_root`` for files a run key names)
    run_cfg: Mapping[str, Any] = {}

    @classmethod
    def setup_task(cls, cfg) -> "BaseTask":
        run = cfg.run_cfg
        task = cls(**{k: run.get(k) for k in cls.RUN_OPTIONS})
        task.run_cfg = run
        return task

    def build_model(self, cfg):
        """The registered model ``from_config``, then freezing / peft as the model section asks.
        Checkpoint locations (``pretrained``, ``finetuned``, ...) are made local first: URLs
        downloaded into the cache, relative paths under ``run.cache_root``."""
        from vlft.common.utils import resolve_model_paths
        from vlft.models.adapters import apply_finetuning

        model_cls = registry.get_model_class(cfg.model_cfg.arch)
        model_cfg = resolve_model_paths(cfg.model_cfg, cfg.run_cfg)
        return apply_finetuning(model_cls.from_config(model_cfg), model_cfg)

    def build_datasets(self, cfg) -> Dict[str, Dict[str, Any]]:
        """``{dataset name: {split: torch Dataset}}`` for every entry under ``datasets:``."""
        datasets = {}
        for name, ds_cfg in cfg.datasets_cfg.items():
            builder = registry.get_builder_class(name)(ds_cfg, run_cfg=cfg.run_cfg)
            datasets[name] = builder.build_datasets()
            sizes = ", ".join(f"{s}={len(d)}" for s, d in datasets[name].items() if hasattr(d, "__len__"))
            logger.info("dataset %s: %s", name, sizes)
        return datasets

    # --- training
    def train_step(self, model, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        output = model(samples)
        if not isinstance(output, Mapping) or "loss" not in output:
            raise TypeError(f"{type(model).__name__}.forward must return a dict with a 'loss' entry, got {type(output).__name__}")
        return dict(output)

    # --- evaluation
    def valid_step(self, model, samples: Mapping[str, Any]) -> List[Dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} does not implement valid_step")

    @torch.no_grad()
    def evaluation(self, model, data_loader: Iterable, progress=None, dataset=None) -> List[Dict[str, Any]]:
        """Run ``valid_step`` over this rank's shard; return every rank's results, de-duplicated.
        ``dataset`` is the whole split (the loader holds this rank's shard of it)."""
        results: List[Dict[str, Any]] = []
        for samples in (progress(data_loader) if progress else data_loader):
            results.extend(self.valid_step(model, samples))
        return self.gather_results(results)

    def gather_results(self, results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        merged, seen = [], set()
        for rank_results in dist.all_gather_object(results):
            for r in rank_results:
                key = r.get(self.result_key) if isinstance(r, Mapping) else None
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                merged.append(r)
        return merged

    def after_evaluation(self, results: List[Dict[str, Any]], split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        """Metrics from the gathered results; must include ``agg_metrics`` (higher is better).
        ``dataset`` is the evaluated split's dataset (e.g. for its ground truth)."""
        raise NotImplementedError

    @staticmethod
    def save_results(results: List[Dict[str, Any]], output_dir: Optional[Path], name: str) -> Optional[Path]:
        if output_dir is None or not dist.is_main_process():
            return None
        path = Path(output_dir) / "result" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        return path
