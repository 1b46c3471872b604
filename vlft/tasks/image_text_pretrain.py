"""Task ``image_text_pretrain``: trains on the model's losses (BLIP-2 stage 1: ITC +
ITM + ITG; stage 2: the language-modelling loss). Validation reports the mean of
every loss the model returns over the split, and ``agg_metrics = -loss`` so that the
best checkpoint is the one with the lowest validation loss (LAVIS does not validate
pretraining at all)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from vlft.common.registry import registry
from vlft.tasks.base_task import BaseTask


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    result_key = None

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        out = model(samples)
        n = len(samples["text_input"]) if "text_input" in samples else int(samples["image"].shape[0])
        return [{"n": n, **{k: float(v) * n for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}}]

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir=None, dataset=None) -> Dict[str, float]:
        total = sum(r["n"] for r in results)
        if not total:
            raise ValueError(f"{split_name}: no samples were evaluated")
        metrics = {k: sum(r[k] for r in results) / total for k in results[0] if k != "n"}
        metrics["agg_metrics"] = -metrics["loss"]
        return metrics
