"""Task ``multimodal_classification`` (LAVIS's ``MultimodalClassificationTask``; NLVR2).

Training is the model's loss. Evaluation calls ``model.predict(samples)``, which
returns ``{"predictions": ..., "targets": LongTensor[n]}``: ``predictions`` either the
class indices (LongTensor[n], as ``blip_nlvr`` gives them) or class scores
(Tensor[n, C], as LAVIS's models give them: the arg-max is taken, as LAVIS does), or
strings, compared with ``samples["label"]``. ``None`` (a batch with nothing to
predict) adds no results. When ``predict`` takes them, LAVIS's generation arguments
``max_length`` / ``min_length`` / ``length_penalty`` (``run.max_len``, ``min_len``,
``length_penalty``) are passed, else ``n_segments`` (``run.segments``) when it takes that.

Results are keyed by ``instance_id``: ``{"instance_id", "prediction", "target"}``.
Metrics, on LAVIS's scale: ``acc`` and ``agg_metrics``, the fraction right (0..1);
``accuracy`` is the same in percent (the scale of vlft's ``classification`` task);
``count`` the number of scored samples.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import _plain

logger = logging.getLogger(__name__)

_GENERATION_ARGS = ("max_length", "min_length", "length_penalty")


@registry.register_task("multimodal_classification")
class MultimodalClassificationTask(BaseTask):
    RUN_OPTIONS = {
        "max_len": Field(30, (int,), "max_length for models whose predict() generates (LAVIS's default 30)"),
        "min_len": Field(1, (int,), "min_length for models whose predict() generates"),
        "length_penalty": Field(-1.0, (int, float), "length_penalty for models whose predict() generates"),
        "segments": Field(1, (int,), "n_segments for models whose predict() takes it (LAVIS's video models)"),
    }
    result_key = "instance_id"

    def __init__(self, max_len: int = 30, min_len: int = 1, length_penalty: float = -1.0, segments: int = 1):
        super().__init__()
        self.max_len, self.min_len, self.length_penalty, self.segments = max_len, min_len, length_penalty, segments

    def _predict(self, model, samples) -> Optional[Dict[str, Any]]:
        import inspect

        try:
            params = inspect.signature(model.predict).parameters
        except (TypeError, ValueError):
            params = {}
        if all(k in params for k in _GENERATION_ARGS):
            return model.predict(samples, max_length=self.max_len, min_length=self.min_len,
                                 length_penalty=self.length_penalty)
        if "n_segments" in params:
            return model.predict(samples, n_segments=self.segments)
        return model.predict(samples)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        outputs = self._predict(model, samples)
        if outputs is None:
            return []
        predictions = outputs["predictions"]
        ids = [_plain(i) for i in samples["instance_id"]]
        if len(predictions) and isinstance(predictions[0], str):
            targets = [_plain(t) for t in samples["label"]]
            return [{"instance_id": i, "prediction": p, "target": t} for i, p, t in zip(ids, predictions, targets)]
        if torch.is_tensor(predictions) and predictions.dim() == 2:
            predictions = predictions.argmax(dim=1)  # class scores, as LAVIS's models return them
        targets = outputs.get("targets", samples.get("label"))
        return [{"instance_id": i, "prediction": int(p), "target": int(t)}
                for i, p, t in zip(ids, _as_list(predictions), _as_list(targets))]

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        from vlft.metrics.classification import accuracy

        if not results:
            raise ValueError(f"multimodal_classification: no results to score on split '{split_name}'")
        acc = accuracy([r["prediction"] for r in results], [r["target"] for r in results])
        return {"agg_metrics": acc, "acc": acc, "accuracy": 100.0 * acc, "count": len(results)}


def _as_list(values: Any) -> List[Any]:
    return values.detach().cpu().tolist() if torch.is_tensor(values) else list(values)
