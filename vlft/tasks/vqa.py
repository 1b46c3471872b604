"""Tasks ``vqa``, ``aok_vqa`` and ``gqa``: answers generated (or ranked over an answer
list) on every rank, gathered by question id and scored.

- ``vqa``: the official VQA accuracy (``vlft.metrics.vqa``: normalization,
  min(#humans that said it / 3, 1) over the 10-choose-9 annotator subsets).
  ``agg_metrics`` = overall accuracy (percent).
- ``aok_vqa`` (LAVIS's ``AOKVQATask``): direct-answer accuracy, min(#annotators who gave
  exactly that answer / 3, 1), ``agg_metrics`` = ``acc`` = its mean (percent). With
  ``run.multiple_choice`` (default on) and a model whose ``predict_answers`` ranks an
  ``answer_list``, each question's four ``choices`` are also ranked (one more rank pass
  per question) and ``mc_acc`` reported; LAVIS scores direct answers only. The test
  split (no answers) saves A-OKVQA's leaderboard file
  (``{question_id: {"direct_answer", "multiple_choice"}}``) next to the results.
- ``gqa`` (LAVIS's ``GQATask``): exact match after VQA v2's punctuation and
  digit / article normalisation of both sides, ``agg_metrics`` = ``acc`` (percent).

Run options: ``inference_method`` (``generate`` | ``rank``), ``prompt`` (e.g.
"Question: {} Short answer:"; ``null`` keeps the model's own), decoding lengths and
beams, ``length_penalty`` (``null``: the model's own, as LAVIS's VQA task never passes
one), ``num_ans_candidates`` (rank), ``answer_list`` (a JSON list of answers; default
the dataset's), ``lemmatize`` (spaCy, as LAVIS does for OK-VQA). A split without
answers (test-dev) only has its predictions saved, in the official submission format.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import _plain, accepts, local_file, select

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
        "length_penalty": Field(None, (int, float, type(None)),
                                "beam-search length penalty for generated answers (null: the model's own)"),
    }
    result_key = "question_id"

    def __init__(self, inference_method: str = "generate", num_beams: int = 3, max_len: int = 10, min_len: int = 1,
                 num_ans_candidates: int = 128, prompt: Optional[str] = None, answer_list: Optional[str] = None,
                 lemmatize: bool = False, length_penalty: Optional[float] = None):
        super().__init__()
        if inference_method not in ("generate", "rank"):
            raise ValueError(f"run.inference_method must be 'generate' or 'rank', got {inference_method!r}")
        self.decoding = dict(inference_method=inference_method, num_beams=num_beams, max_len=max_len, min_len=min_len,
                             num_ans_candidates=num_ans_candidates, prompt=prompt, length_penalty=length_penalty)
        self.answer_list_path, self.lemmatize = answer_list, lemmatize
        self._answer_list: Optional[List[str]] = None
        self._warned_length_penalty = False

    def answer_list_for(self, dataset) -> Optional[List[str]]:
        if self.answer_list_path:
            path = local_file(self.answer_list_path, self.run_cfg)
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

    def predict(self, model, samples, **overrides) -> List[str]:
        """``model.predict_answers`` with the run's decoding (options set to ``null`` left out)."""
        decoding = {k: v for k, v in {**self.decoding, **overrides}.items() if v is not None}
        if "length_penalty" in decoding and not accepts(model.predict_answers, "length_penalty"):
            if not self._warned_length_penalty:
                self._warned_length_penalty = True
                logger.warning("run.length_penalty=%s ignored: %s.predict_answers takes no length_penalty",
                               decoding["length_penalty"], type(model).__name__)
            del decoding["length_penalty"]
        if "answer_list" not in overrides and (self._answer_list is not None
                                               or accepts(model.predict_answers, "answer_list")):
            decoding["answer_list"] = self._answer_list
        return model.predict_answers(samples, **decoding)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        answers = self.predict(model, samples)
        return [{"question_id": _plain(q), "answer": a} for q, a in zip(samples["question_id"], answers)]

    def ground_truth(self, dataset) -> Dict[Any, List[str]]:
        """``question_id -> answers`` of the questions that have answers."""
        truth = dataset.ground_truth() if hasattr(dataset, "ground_truth") else {}
        return {_plain(k): v for k, v in truth.items() if v}

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        from vlft.metrics.vqa import make_lemmatizer, vqa_scores

        if self.lemmatize:
            lemma = make_lemmatizer()
            for r in results:
                r["answer"] = lemma(r["answer"])
        truth = self.ground_truth(dataset)
        if not truth:
            logger.info("%s has no answers (a test split): predictions saved for submission, not scored", split_name)
            return {"agg_metrics": 0.0, "scored": "no (split has no answers)"}
        predictions = {r["question_id"]: r["answer"] for r in results}
        types = dataset.answer_types() if hasattr(dataset, "answer_types") else None
        return vqa_scores(predictions, truth, types or None)


@registry.register_task("aok_vqa")
class AOKVQATask(VQATask):
    RUN_OPTIONS = {
        **VQATask.RUN_OPTIONS,
        "multiple_choice": Field(True, (bool,), "also rank each A-OKVQA question's choices and report mc_acc "
                                                "(one more rank pass per question; LAVIS reports direct answers only)"),
    }

    def __init__(self, multiple_choice: bool = True, **options: Any):
        super().__init__(**options)
        self.multiple_choice = multiple_choice
        self._mc_off: Optional[str] = None  # why multiple choice is not scored, once known

    def evaluation(self, model, data_loader, progress=None, dataset=None) -> List[Dict[str, Any]]:
        self._mc_off = None  # decided afresh for each evaluated model
        return super().evaluation(model, data_loader, progress, dataset)

    def _ranks_choices(self, model) -> bool:
        if not self.multiple_choice:
            return False
        if self._mc_off is None and not accepts(model.predict_answers, "answer_list"):
            self._mc_off = f"{type(model).__name__}.predict_answers takes no answer_list to rank"
        if self._mc_off:
            return False
        return True

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        results = super().valid_step(model, samples)
        choices = samples.get("choices")
        if choices is None or not self._ranks_choices(model):
            return results
        batch = len(results)
        for i, result in enumerate(results):
            one = select(samples, [i], batch)
            try:
                picked = self.predict(model, one, inference_method="rank", answer_list=list(choices[i]),
                                      num_ans_candidates=len(choices[i]))
            except NotImplementedError as err:
                self._mc_off = f"{type(model).__name__} cannot rank answers ({err})"
                return results
            result["mc_answer"] = picked[0]
        return results

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        from vlft.metrics.vqa import aokvqa_scores

        truth = self.ground_truth(dataset)
        if not truth:
            board = {str(r["question_id"]): {"direct_answer": r["answer"], "multiple_choice": r.get("mc_answer", "")}
                     for r in results}
            path = self.save_results(board, output_dir, f"{split_name}_{epoch if epoch is not None else 'final'}_leaderboard")
            logger.info("%s has no answers (a test split): A-OKVQA leaderboard file saved%s", split_name,
                        f" at {path}" if path else "")
            return {"agg_metrics": 0.0, "scored": "no (split has no answers)"}
        predictions = {r["question_id"]: r["answer"] for r in results}
        chosen = {r["question_id"]: r["mc_answer"] for r in results if "mc_answer" in r}
        correct = dataset.correct_choices() if hasattr(dataset, "correct_choices") else {}
        metrics: Dict[str, Any] = aokvqa_scores(predictions, truth, chosen if chosen else None,
                                                {_plain(k): v for k, v in correct.items()})
        if "mc_acc" not in metrics and self.multiple_choice:
            why = self._mc_off or ("the split has no correct choices" if not correct else "no choices were ranked")
            logger.warning("%s: multiple-choice accuracy not scored: %s", split_name, why)
            metrics["mc_acc"] = f"not scored ({why})"
        return metrics


@registry.register_task("gqa")
class GQATask(VQATask):
    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        from vlft.metrics.vqa import gqa_scores

        truth = self.ground_truth(dataset)
        if not truth:
            logger.info("%s has no answers (a test split): predictions saved, not scored", split_name)
            return {"agg_metrics": 0.0, "scored": "no (split has no answers)"}
        return gqa_scores({r["question_id"]: r["answer"] for r in results}, truth)
