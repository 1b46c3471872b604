"""Task ``vqa``: answers generated (or ranked over an answer list) on every rank,
gathered by question id and scored with the official VQA accuracy
(``vlft.metrics.vqa``: normalization, min(#humans that said it / 3, 1) over the
10-choose-9 annotator subsets). ``agg_metrics`` = overall accuracy (percent).

Run options: ``inference_method`` (``generate`` | ``rank``), ``prompt`` (e.g.
"Question: {} Short answer:"; ``null`` keeps the model's own), decoding lengths and
beams, ``num_ans_candidates`` (rank), ``answer_list`` (a JSON list of answers; default
the dataset's), ``lemmatize`` (spaCy, as LAVIS does for OK-VQA). A split without
answers (test-dev) only has its predictions saved, in the official submission format.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from vlft.common import dist
from vlft.common.registry import registry
from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import _plain

logger = logging.getLogger(__name__)


@registry.register_task("vqa")
class VQATask(BaseTask):
    RUN_OPTIONS = {
        "inference_method": "generate",
        "num_beams": 3,
        "max_len": 10,
        "min_len": 1,
        "num_ans_candidates": 128,
        "prompt": None,
        "answer_list": None,
        "lemmatize": False,
    }
    result_key = "question_id"

    def __init__(self, inference_method: str = "generate", num_beams: int = 3, max_len: int = 10, min_len: int = 1,
                 num_ans_candidates: int = 128, prompt: Optional[str] = None, answer_list: Optional[str] = None,
                 lemmatize: bool = False):
        super().__init__()
        if inference_method not in ("generate", "rank"):
            raise ValueError(f"run.inference_method must be 'generate' or 'rank', got {inference_method!r}")
        self.decoding = dict(inference_method=inference_method, num_beams=num_beams, max_len=max_len, min_len=min_len,
                             num_ans_candidates=num_ans_candidates, prompt=prompt)
        self.answer_list_path, self.lemmatize = answer_list, lemmatize
        self._answer_list: Optional[List[str]] = None

    def answer_list_for(self, dataset) -> Optional[List[str]]:
        if self.answer_list_path:
            from vlft.common.utils import resolve_data_path

            path = resolve_data_path(self.answer_list_path)
            if not Path(path).is_file():
                raise FileNotFoundError(f"run.answer_list: no file {path}")
            return json.loads(Path(path).read_text())
        return getattr(dataset, "answer_list", None)

    def evaluation(self, model, data_loader, progress=None, dataset=None) -> List[Dict[str, Any]]:
        self._answer_list = self.answer_list_for(dataset)
        if self.decoding["inference_method"] == "rank" and not self._answer_list:
            raise ValueError("run.inference_method 'rank' needs an answer list: the dataset's "
                             "build_info.answer_list or run.answer_list")
        return super().evaluation(model, data_loader, progress)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        decoding = {k: v for k, v in self.decoding.items() if v is not None}
        answers = model.predict_answers(samples, answer_list=self._answer_list, **decoding)
        return [{"question_id": _plain(q), "answer": a} for q, a in zip(samples["question_id"], answers)]

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        from vlft.metrics.vqa import make_lemmatizer, vqa_scores

        if self.lemmatize:
            lemma = make_lemmatizer()
            for r in results:
                r["answer"] = lemma(r["answer"])
        truth = {_plain(k): v for k, v in (dataset.ground_truth() if hasattr(dataset, "ground_truth") else {}).items() if v}
        if not truth:
            logger.info("%s has no answers (a test split): predictions saved for submission, not scored", split_name)
            return {"agg_metrics": 0.0, "scored": "no (split has no answers)"}
        predictions = {r["question_id"]: r["answer"] for r in results}
        types = dataset.answer_types() if hasattr(dataset, "answer_types") else None
        return vqa_scores(predictions, truth, types or None)
