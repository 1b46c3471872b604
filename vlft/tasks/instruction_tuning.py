"""Task ``instruction_tuning`` (also registered as ``deepspeed_image_text_pretrain``, the name
MiniGPT4Qwen's DeepSpeed YAMLs use; its ``image_text_pretrain`` YAMLs train the same way
with vlft's ``image_text_pretrain`` task): trains on the model's language-modelling loss
over the learned (assistant) tokens.

Validation reports the loss over the split (token-weighted when the model returns
``n_label_tokens``) and, when the split has reference answers (conversations ending
with an assistant turn, ``dataset.ground_truth()``) and ``run.answer_metric`` is not
``none``, generates each conversation's last answer from the turns before it and scores
it: ``vqa`` (default: VQA accuracy in percent, which is exact match after VQA
normalisation when there is one reference), ``caption`` (pycocoevalcap: BLEU, METEOR,
ROUGE-L, CIDEr) or ``none``. ``agg_metrics``: the VQA ``overall`` accuracy, ``CIDEr +
Bleu_4``, or ``-loss`` without scoring. A dataset with ``question_types()`` (the shapes
chat) also gets the accuracy per question type (``acc_q0`` ...).

Decoding keys (as LAVIS's caption task): ``num_beams``, ``max_len`` / ``min_len`` (new
tokens), ``use_nucleus_sampling``, ``top_p``, ``temperature``, ``repetition_penalty``,
``length_penalty``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

import torch

from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)
METRICS = ("vqa", "caption", "none")


@registry.register_task("deepspeed_image_text_pretrain")
@registry.register_task("instruction_tuning")
class InstructionTuningTask(BaseTask):
    RUN_OPTIONS = {
        "answer_metric": Field("vqa", (str,), "score generated answers with: vqa (accuracy) | caption | none"),
        "num_beams": 1,
        "max_len": 30,
        "min_len": 1,
        "use_nucleus_sampling": False,
        "top_p": 0.9,
        "temperature": 1.0,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
    }
    result_key = "sample_id"

    def __init__(self, answer_metric: str = "vqa", num_beams: int = 1, max_len: int = 30, min_len: int = 1,
                 use_nucleus_sampling: bool = False, top_p: float = 0.9, temperature: float = 1.0,
                 repetition_penalty: float = 1.0, length_penalty: float = 1.0):
        super().__init__()
        if answer_metric not in METRICS:
            raise ValueError(f"run.answer_metric must be one of {list(METRICS)}, got {answer_metric!r}")
        self.answer_metric = answer_metric
        self.decoding = dict(num_beams=num_beams, max_length=max_len, min_length=min_len, top_p=top_p,
                             use_nucleus_sampling=use_nucleus_sampling, temperature=temperature,
                             repetition_penalty=repetition_penalty, length_penalty=length_penalty)
        self._score = False

    @classmethod
    def setup_task(cls, cfg) -> "InstructionTuningTask":
        task = super().setup_task(cfg)
        run = task.run_cfg or {}
        if task.answer_metric == "caption" and (run.get("evaluate") or run.get("valid_splits") or run.get("test_splits")):
            from vlft.common.errors import require_java

            require_java("run.answer_metric: caption")
        return task

    def evaluation(self, model, data_loader, progress=None, dataset=None) -> List[Dict[str, Any]]:
        truth = dataset.ground_truth() if hasattr(dataset, "ground_truth") else {}
        self._score = self.answer_metric != "none" and bool(truth)
        return super().evaluation(model, data_loader, progress)

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        out = model(samples)
        n = out.get("n_label_tokens")
        weight = float(n) if n is not None else float(len(samples.get("conversation") or samples["text_input"]))
        results: List[Dict[str, Any]] = [{"loss_sum": float(out["loss"]) * weight, "weight": weight}]
        if self._score and samples.get("answer") is not None:
            keep = [i for i, a in enumerate(samples["answer"]) if a is not None]
            if keep:
                from vlft.tasks.captioning import select

                part = select(samples, keep, len(samples["answer"])) if len(keep) < len(samples["answer"]) else samples
                if len(keep) < len(samples["answer"]):  # images follow the kept samples
                    part = _select_images(samples, keep, part)
                answers = model.generate(part, **self.decoding)
                results += [{"sample_id": _plain(part["sample_id"][k]), "answer": a} for k, a in enumerate(answers)]
        return results

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir=None, dataset=None) -> Dict[str, float]:
        losses = [r for r in results if "loss_sum" in r]
        total = sum(r["weight"] for r in losses)
        if not total:
            raise ValueError(f"{split_name}: no samples were evaluated")
        metrics: Dict[str, Any] = {"loss": sum(r["loss_sum"] for r in losses) / total}
        predictions = {r["sample_id"]: r["answer"] for r in results if "answer" in r}
        if not predictions:
            metrics["agg_metrics"] = -metrics["loss"]
            return metrics
        truth = {_plain(k): v for k, v in dataset.ground_truth().items() if _plain(k) in predictions}
        if self.answer_metric == "caption":
            from vlft.metrics.caption import shared_scorer

            metrics.update(shared_scorer(False)(truth, predictions))
            metrics["agg_metrics"] = metrics["CIDEr"] + metrics["Bleu_4"]
            return metrics
        from vlft.metrics.vqa import vqa_scores

        kinds = dataset.question_types() if hasattr(dataset, "question_types") else None
        types = {i: f"acc_q{kinds[i]}" for i in truth} if kinds else None
        scores = vqa_scores(predictions, truth, types)
        metrics.update(scores)
        metrics["agg_metrics"] = scores["overall"]
        return metrics


def _select_images(samples, keep: List[int], part: Dict[str, Any]) -> Dict[str, Any]:
    """``part`` with ``image`` / ``n_images`` cut to the images of the kept samples."""
    counts = [int(k) for k in samples["n_images"]]
    starts = [sum(counts[:i]) for i in range(len(counts))]
    rows = [r for i in keep for r in range(starts[i], starts[i] + counts[i])]
    image = samples.get("image")
    part = dict(part)
    if image is None or not rows:
        part["image"] = None
    elif torch.is_tensor(image):
        part["image"] = image[torch.as_tensor(rows, dtype=torch.long, device=image.device)]
    else:
        part["image"] = [image[r] for r in rows]
    part["n_images"] = torch.tensor([counts[i] for i in keep])
    return part


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
