"""Task ``captioning``: batched generation on every rank, gathered and de-duplicated by
image id, scored with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE when it
can run). ``agg_metrics = CIDEr + BLEU-4``, as LAVIS reports it. The ground truth comes
from the evaluated dataset (``dataset.ground_truth()``), whichever builder made it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from vlft.common.registry import registry
from vlft.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


@registry.register_task("captioning")
class CaptionTask(BaseTask):
    RUN_OPTIONS = {
        "num_beams": 3,
        "max_len": 30,
        "min_len": 8,
        "use_nucleus_sampling": False,
        "top_p": 0.9,
        "repetition_penalty": 1.0,
        "report_metric": True,
        "spice": False,
    }
    result_key = "image_id"

    def __init__(self, num_beams: int = 3, max_len: int = 30, min_len: int = 8, use_nucleus_sampling: bool = False,
                 top_p: float = 0.9, repetition_penalty: float = 1.0, report_metric: bool = True, spice: bool = False):
        super().__init__()
        self.decoding = dict(num_beams=num_beams, max_length=max_len, min_length=min_len, top_p=top_p,
                             use_nucleus_sampling=use_nucleus_sampling, repetition_penalty=repetition_penalty)
        self.report_metric, self.spice = report_metric, spice
        self._scorer = None  # one METEOR process for all of a run's evaluations

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        captions = model.generate(samples, **self.decoding)
        return [{"image_id": _plain(i), "caption": c} for i, c in zip(samples["image_id"], captions)]

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        if not self.report_metric:
            return {"agg_metrics": 0.0}
        if dataset is None or not hasattr(dataset, "ground_truth"):
            raise TypeError(f"captioning needs the {split_name} dataset's ground_truth() to score captions")
        from vlft.metrics.caption import CaptionScorer, spice_unavailable_reason

        truth = {_plain(k): v for k, v in dataset.ground_truth().items()}
        predictions = {r["image_id"]: r["caption"] for r in results}
        unscored = len(truth) - len(predictions)
        if unscored:
            logger.warning("%s: %d image(s) have no prediction (unreadable images); scoring the other %d",
                           split_name, unscored, len(predictions))
            truth = {k: truth[k] for k in predictions}
        if self._scorer is None:
            self._scorer = CaptionScorer(spice=self.spice)
        metrics: Dict[str, Any] = self._scorer(truth, predictions)
        if self.spice and "SPICE" not in metrics:
            metrics["SPICE"] = f"skipped ({spice_unavailable_reason() or 'SPICE failed, see the warning above'})"
        metrics["agg_metrics"] = metrics["CIDEr"] + metrics["Bleu_4"]
        return metrics


def _plain(value: Any) -> Any:
    """Image ids arrive as tensors or numpy scalars after collation; results need plain values."""
    return value.item() if hasattr(value, "item") else value
