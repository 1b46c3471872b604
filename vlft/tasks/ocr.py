"""Task ``ocr``: text recognition (Florence-2 ``<OCR>``) scored with character and word
error rates (``vlft.metrics.text``, corpus-level, percent).

The data are image-text pairs read by a captioning builder (e.g. ``caption_custom`` with
``caption_key: text`` and no text processor, so case and punctuation are kept); the
prompt is ``run.prompt`` (default ``<OCR>``), the same one the model trains with when
``model.prompt`` is set to it. ``agg_metrics`` = 100 - CER (higher is better).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import _plain


@registry.register_task("ocr")
class OCRTask(BaseTask):
    RUN_OPTIONS = {
        "num_beams": 3,
        "max_len": Field(1024, (int,), "most new tokens per transcription"),
        "min_len": 1,
        "prompt": Field("<OCR>", (str,), "the task prompt"),
    }
    result_key = "image_id"

    def __init__(self, num_beams: int = 3, max_len: int = 1024, min_len: int = 1, prompt: str = "<OCR>"):
        super().__init__()
        self.decoding = dict(num_beams=num_beams, max_length=max_len, min_length=min_len, prompt=prompt)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        texts = model.generate(samples, **self.decoding)
        return [{"image_id": _plain(i), "text": t} for i, t in zip(samples["image_id"], texts)]

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, Any]:
        from vlft.metrics.text import error_rates

        if dataset is None or not hasattr(dataset, "ground_truth"):
            raise TypeError(f"ocr needs the {split_name} dataset's ground_truth() (reference texts by image id)")
        truth = {_plain(k): v for k, v in dataset.ground_truth().items()}
        metrics: Dict[str, Any] = error_rates({r["image_id"]: r["text"] for r in results}, truth)
        metrics["agg_metrics"] = 100.0 - metrics["CER"]
        return metrics
