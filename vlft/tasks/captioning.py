"""Task ``captioning``: batched generation on every rank, gathered and de-duplicated by
image id, scored with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE when it
can run). ``agg_metrics = CIDEr + BLEU-4``, as LAVIS reports it. The ground truth comes
from the evaluated dataset (``dataset.ground_truth()``), whichever builder made it, or
from ``run.annotation_file``.

LAVIS's run keys, as its ``CaptionTask`` reads them:

- ``annotation_file``: reference captions in COCO format (``{"annotations": [{"image_id",
  "caption"}, ...]}``, e.g. NoCaps's ``nocaps_val_4500_captions.json``): a path (relative
  ones under the cache root) or an ``https://`` URL, downloaded once into the cache.
  Used instead of the dataset's references; every predicted image must be in it.
- ``img_ids``: caption and score only these image ids (LAVIS's NoCaps out-domain
  subset). LAVIS generates every image and drops the others from the results; here the
  others are dropped before generation (each image's caption is its own, so the kept
  captions are the same) and the scores are over the kept images, as LAVIS's
  ``coco_eval.params["image_id"]``.
- ``length_penalty``: beam-search length penalty, passed to ``model.generate`` when it
  takes one (BLIP-2 does, BLIP's captioner does not: then it is ignored with a
  warning). ``null`` (default) keeps the model's own (BLIP-2: 1.0), which is what
  LAVIS 1.0.2's task did; LAVIS's later task passes 0.0 when unset.
- ``inference_method``: accepted for LAVIS's configs; captioning always generates.
"""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence

from vlft.common import dist
from vlft.common.errors import require_java
from vlft.common.registry import registry
from vlft.common.run_schema import Field
from vlft.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)

COCO_CAPTIONS_FORMAT = ('COCO caption format: {"images": [{"id": 0, ...}], "annotations": '
                        '[{"image_id": 0, "caption": "a dog on a beach", "id": 1}, ...]}')


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
        "length_penalty": Field(None, (int, float, type(None)),
                                "beam-search length penalty passed to model.generate when it takes one "
                                "(null: the model's own)"),
        "annotation_file": Field(None, (str, type(None)),
                                 "reference captions in COCO format (path or https URL) used instead of the "
                                 "dataset's, e.g. NoCaps's nocaps_val_4500_captions.json"),
        "img_ids": Field(None, (list, type(None)), "caption and score only these image ids (e.g. NoCaps out-domain)"),
        "inference_method": Field("generate", (str,), "kept for LAVIS configs: captioning always generates"),
    }
    result_key = "image_id"

    def __init__(self, num_beams: int = 3, max_len: int = 30, min_len: int = 8, use_nucleus_sampling: bool = False,
                 top_p: float = 0.9, repetition_penalty: float = 1.0, report_metric: bool = True, spice: bool = False,
                 length_penalty: Optional[float] = None, annotation_file: Optional[str] = None,
                 img_ids: Optional[Sequence[Hashable]] = None, inference_method: str = "generate"):
        super().__init__()
        if inference_method not in (None, "generate"):
            raise ValueError(f"run.inference_method: captioning generates its captions; got {inference_method!r} "
                             "(only 'generate' is meaningful here)")
        self.decoding = dict(num_beams=num_beams, max_length=max_len, min_length=min_len, top_p=top_p,
                             use_nucleus_sampling=use_nucleus_sampling, repetition_penalty=repetition_penalty)
        self.length_penalty = length_penalty
        self.report_metric, self.spice = report_metric, spice
        self.annotation_file = annotation_file
        self.img_ids = {_plain(i) for i in img_ids} if img_ids else None
        self._reference_file: Optional[Dict[Hashable, List[str]]] = None
        self._warned_length_penalty = False
        self._scorer = None  # None: the process's shared scorer (one METEOR JVM for every task)

    @classmethod
    def setup_task(cls, cfg) -> "CaptionTask":
        task = super().setup_task(cfg)
        raw = task.annotation_file
        if raw and not raw.startswith(("http://", "https://")):  # a URL is fetched when first scored
            path = local_file(raw, task.run_cfg)
            if not path.is_file():
                raise FileNotFoundError(f"run.annotation_file: no file {path} (from {raw!r}); "
                                        f"expected {COCO_CAPTIONS_FORMAT}")
        run = task.run_cfg or {}
        if task.report_metric and (run.get("evaluate") or run.get("valid_splits") or run.get("test_splits")):
            require_java("the caption metrics (run.report_metric: true)")
            if dist.is_main_process():  # METEOR's JVM loads while the data and the model are built
                from vlft.metrics.caption import shared_scorer

                shared_scorer(task.spice).start()
        return task

    def _decoding_for(self, generate: Callable) -> Dict[str, Any]:
        decoding = dict(self.decoding)
        if self.length_penalty is not None:
            if accepts(generate, "length_penalty"):
                decoding["length_penalty"] = self.length_penalty
            elif not self._warned_length_penalty:
                self._warned_length_penalty = True
                logger.warning("run.length_penalty=%s ignored: %s.generate takes no length_penalty",
                               self.length_penalty, type(getattr(generate, "__self__", generate)).__name__)
        return decoding

    def valid_step(self, model, samples) -> List[Dict[str, Any]]:
        ids = [_plain(i) for i in samples["image_id"]]
        if self.img_ids is not None:
            keep = [i for i, image_id in enumerate(ids) if image_id in self.img_ids]
            if not keep:
                return []
            if len(keep) < len(ids):
                samples, ids = select(samples, keep, len(ids)), [ids[i] for i in keep]
        captions = model.generate(samples, **self._decoding_for(model.generate))
        return [{"image_id": i, "caption": c} for i, c in zip(ids, captions)]

    def references(self, split_name: str, dataset=None) -> Dict[Hashable, List[str]]:
        """The reference captions by image id: ``run.annotation_file``, else the dataset's."""
        if self.annotation_file:
            if self._reference_file is None:
                self._reference_file = read_coco_captions(self.annotation_file, self.run_cfg)
            return self._reference_file
        if dataset is None or not hasattr(dataset, "ground_truth"):
            raise TypeError(f"captioning needs the {split_name} dataset's ground_truth() (or run.annotation_file) "
                            "to score captions")
        truth = {_plain(k): v for k, v in dataset.ground_truth().items()}
        if not any(truth.values()):
            raise ValueError(f"captioning: the {split_name} split has no reference captions (e.g. NoCaps's own "
                             "files); set run.annotation_file to the references in COCO format (NoCaps: "
                             "https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json), or run.report_metric: "
                             "false to only save the captions")
        return truth

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        if not self.report_metric:
            return {"agg_metrics": 0.0}
        from vlft.metrics.caption import shared_scorer, spice_unavailable_reason

        truth = self.references(split_name, dataset)
        predictions = {r["image_id"]: r["caption"] for r in results}
        if self.annotation_file:
            unknown = [i for i in predictions if i not in truth]
            if unknown:
                raise ValueError(f"captioning: {len(unknown)} predicted image id(s) are not in run.annotation_file "
                                 f"{self.annotation_file}, e.g. {unknown[:3]}; the file must be the split's references")
            truth = {k: truth[k] for k in predictions}  # LAVIS scores the predicted images (loadRes)
        elif self.img_ids is not None:
            truth = {k: v for k, v in truth.items() if k in self.img_ids}
        unscored = len(truth) - len(predictions)
        if unscored:
            logger.warning("%s: %d image(s) have no prediction (unreadable images); scoring the other %d",
                           split_name, unscored, len(predictions))
            truth = {k: truth[k] for k in predictions}
        if not predictions:
            raise ValueError(f"captioning: no captions to score on split '{split_name}'"
                             + (" (none of its images is in run.img_ids)" if self.img_ids is not None else ""))
        metrics: Dict[str, Any] = (self._scorer or shared_scorer(self.spice))(truth, predictions)
        if self.spice and "SPICE" not in metrics:
            metrics["SPICE"] = f"skipped ({spice_unavailable_reason() or 'SPICE failed, see the warning above'})"
        metrics["agg_metrics"] = metrics["CIDEr"] + metrics["Bleu_4"]
        return metrics


def read_coco_captions(raw: str, run_cfg: Optional[Mapping[str, Any]] = None) -> Dict[Hashable, List[str]]:
    """``image_id -> [captions]`` of a COCO-format caption file (a path or an https URL)."""
    path = local_file(raw, run_cfg)
    if not path.is_file():
        raise FileNotFoundError(f"run.annotation_file: no file {path} (from {raw!r}); expected {COCO_CAPTIONS_FORMAT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"run.annotation_file: {path} is not valid JSON ({err}); expected {COCO_CAPTIONS_FORMAT}") from None
    annotations = data.get("annotations") if isinstance(data, Mapping) else None
    if not isinstance(annotations, list):
        raise ValueError(f"run.annotation_file: {path} has no 'annotations' list; expected {COCO_CAPTIONS_FORMAT}")
    out: Dict[Hashable, List[str]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, Mapping) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ValueError(f"run.annotation_file: annotation {i} of {path} needs 'image_id' and a 'caption' "
                             f"string; expected {COCO_CAPTIONS_FORMAT}")
        out.setdefault(_plain(ann["image_id"]), []).append(ann["caption"])
    return out


def local_file(raw: str, run_cfg: Optional[Mapping[str, Any]] = None) -> Path:
    """A file named in a run key: an ``https://`` URL downloaded once into the cache,
    else ``resolve_data_path`` (absolute, the working directory, then the cache root)."""
    from vlft.common.download import download_cached, is_url
    from vlft.common.utils import cache_root, resolve_data_path

    if is_url(raw):
        return download_cached(raw, cache_root(run_cfg))
    return resolve_data_path(raw, run_cfg)


def accepts(method: Callable, name: str) -> bool:
    """Whether ``method`` takes a keyword argument ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def select(samples: Mapping[str, Any], keep: List[int], batch: int) -> Dict[str, Any]:
    """The rows ``keep`` of a batch: tensors and lists of length ``batch`` are indexed, the rest kept."""
    import torch

    out: Dict[str, Any] = {}
    for key, value in samples.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
            out[key] = value[torch.as_tensor(keep, device=value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == batch:
            out[key] = [value[i] for i in keep]
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    """Image ids arrive as tensors or numpy scalars after collation; results need plain values."""
    return value.item() if hasattr(value, "item") else value
