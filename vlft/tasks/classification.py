"""Task ``classification``: accuracy of ``model.predict`` against ``samples["label"]``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from vlft.common.registry import registry
from vlft.tasks.base_task import BaseTask


@registry.register_task("classification")
class ClassificationTask(BaseTask):
    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        predictions = model.predict(samples)
        labels = samples["label"].tolist()
        ids = samples["instance_id"].tolist()
        return [{"instance_id": i, "prediction": p, "label": y} for i, p, y in zip(ids, predictions, labels)]

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        if not results:
            raise ValueError(f"no results to score on split '{split_name}'")
        accuracy = 100.0 * sum(r["prediction"] == r["label"] for r in results) / len(results)
        return {"accuracy": accuracy, "agg_metrics": accuracy, "count": len(results)}
