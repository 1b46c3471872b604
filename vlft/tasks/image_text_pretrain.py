"""Task ``image_text_pretrain``: trains on the model's losses (BLIP-2 stage 1: ITC +
ITM + ITG; stage 2: the language-modelling loss). Validation reports the mean of
every loss the model returns over the split, and ``agg_metrics = -loss`` so that the
best checkpoint is the one with the lowest validation loss (LAVIS does not validate
pretraining at all). An evaluation split that holds one item per image (captioning
datasets) is paired with each image's first reference caption."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from vlft.common.registry import registry
from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import _plain


@registry.register_task("image_text_pretrain")
class ImageTextPretrainTask(BaseTask):
    result_key = None
    _captions: Optional[Dict[Any, str]] = None

    def evaluation(self, model, data_loader, progress=None, dataset=None) -> List[Dict[str, Any]]:
        truth = dataset.ground_truth() if hasattr(dataset, "ground_truth") else {}
        self._captions = {_plain(k): v[0] for k, v in truth.items() if v}
        return super().evaluation(model, data_loader, progress)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        if "text_input" not in samples:
            if not self._captions:
                raise ValueError("image_text_pretrain validation needs captions: the split's items have no "
                                 "text_input and its dataset no ground_truth()")
            samples = {**samples, "text_input": [self._captions[_plain(i)] for i in samples["image_id"]]}
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
