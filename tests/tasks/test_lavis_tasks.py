"""The tasks LAVIS's BLIP / BLIP-2 projects name (``multimodal_classification``,
``aok_vqa``, ``gqa``) and the captioning / VQA run keys they use, driven by small fake
models over datasets built in memory: results, metrics against hand-computed values,
what reaches the model, and the files saved."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, List, Optional, Sequence

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from vlft.common.config import Config, ConfigError
from vlft.common.registry import registry
from vlft.datasets.nlvr_datasets import NLVREvalDataset
from vlft.datasets.vqa_datasets import AOKVQAEvalDataset, VQAEvalDataset
from vlft.runners.data import collate_fn_of


def setup(name: str, **run: Any):
    """The registered task, set up as the launcher does from a ``run:`` section."""
    task_cls = registry.get_task_class(name)
    options = {k: (v.default if hasattr(v, "doc") else v) for k, v in task_cls.RUN_OPTIONS.items()}
    return task_cls.setup_task(OmegaConf.create({"run_cfg": {**options, **run}}))


def loader(dataset, batch_size: int = 2):
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn_of(dataset))


# ------------------------------------------------------------------ multimodal_classification
class FakeNLVR(nn.Module):
    """``predict`` as helper models give it: class indices (or, ``logits=True``, LAVIS-style scores)."""

    def __init__(self, answers: Dict[str, int], logits: bool = False):
        super().__init__()
        self.answers, self.logits = answers, logits
        self.weight = nn.Parameter(torch.tensor(2.0))

    def forward(self, samples):
        return {"loss": self.weight * samples["label"].float().mean(), "loss_itm": torch.tensor(0.5)}

    def predict(self, samples):
        pred = torch.tensor([self.answers[i] for i in samples["instance_id"]])
        if self.logits:
            pred = nn.functional.one_hot(pred, 2).float() * 3 - 1
        return {"predictions": pred, "targets": samples["label"]}


def nlvr_dataset() -> NLVREvalDataset:
    from PIL import Image

    img = Image.new("RGB", (4, 4))
    records = [{"images": [img, img], "sentence": f"s{i}", "label": label} for i, label in enumerate([1, 0, 1, 1, 0])]
    return NLVREvalDataset.from_records(records)


@pytest.mark.parametrize("logits", [False, True])
def test_multimodal_classification_accuracy_and_results(logits):
    task = setup("multimodal_classification")
    ds = nlvr_dataset()
    model = FakeNLVR({"0": 1, "1": 1, "2": 1, "3": 0, "4": 0}, logits=logits)  # right on 0, 2, 4
    results = task.evaluation(model, loader(ds), dataset=ds)
    assert results == [{"instance_id": str(i), "prediction": p, "target": t}
                       for i, (p, t) in enumerate([(1, 1), (1, 0), (1, 1), (0, 1), (0, 0)])]
    metrics = task.after_evaluation(results, "val", 0, dataset=ds)
    assert metrics == {"agg_metrics": pytest.approx(0.6), "acc": pytest.approx(0.6), "accuracy": pytest.approx(60.0),
                       "count": 5}
    batch = next(iter(loader(ds)))
    out = task.train_step(model, batch)
    assert set(out) == {"loss", "loss_itm"} and out["loss"].item() == pytest.approx(1.0)  # 2 x mean label of [1, 0]


def test_multimodal_classification_passes_generation_args_when_predict_takes_them():
    seen = {}

    class Generative(FakeNLVR):
        def predict(self, samples, max_length=5, min_length=1, length_penalty=0.0):
            seen.update(max_length=max_length, min_length=min_length, length_penalty=length_penalty)
            return {"predictions": ["true"] * len(samples["text_input"])}

    class Empty(FakeNLVR):
        def predict(self, samples):
            return None

    task = setup("multimodal_classification", max_len=12, min_len=2)
    ds = nlvr_dataset()
    results = task.evaluation(Generative({}), loader(ds), dataset=ds)
    assert seen == {"max_length": 12, "min_length": 2, "length_penalty": -1.0}  # LAVIS's defaults otherwise
    assert results[0] == {"instance_id": "0", "prediction": "true", "target": 1}
    assert task.evaluation(Empty({}), loader(ds), dataset=ds) == []
    with pytest.raises(ValueError, match="no results to score on split 'val'"):
        task.after_evaluation([], "val", 0)


# ------------------------------------------------------------------ aok_vqa
CHOICES = {"a": ["red", "blue", "green", "no"], "b": ["circle", "square", "yes", "triangle"],
           "c": ["yes", "no", "red", "cab"]}


class FakeVQA(nn.Module):
    """``predict_answers`` returning fixed answers (generate) or its pick of ``answer_list`` (rank)."""

    def __init__(self, answers: Dict[Any, str], picks: Optional[Dict[Any, str]] = None):
        super().__init__()
        self.answers, self.picks, self.calls = answers, picks or {}, []

    def predict_answers(self, samples, inference_method="generate", answer_list=None, num_beams=3, max_len=10,
                        min_len=1, num_ans_candidates=128, prompt=None, **kwargs) -> List[str]:
        self.calls.append(dict(inference_method=inference_method, answer_list=answer_list, n=len(samples["text_input"]),
                               num_ans_candidates=num_ans_candidates, prompt=prompt, **kwargs))
        qids = samples["question_id"]
        if inference_method == "rank":
            return [self.picks.get(q, answer_list[0]) if self.picks.get(q) in answer_list else answer_list[0]
                    for q in qids]
        return [self.answers[q] for q in qids]


def aok_dataset(with_answers: bool = True) -> AOKVQAEvalDataset:
    direct = {"a": ["red"] * 2 + ["maroon"] * 8, "b": ["circle"] * 10, "c": ["yes"] * 1 + ["no"] * 9}
    correct = {"a": 0, "b": 3, "c": 3}
    records = []
    for qid, choices in CHOICES.items():
        record = {"question_id": qid, "question": f"{qid}?", "image": torch.zeros(3, 4, 4), "choices": choices}
        if with_answers:
            record.update(answer=direct[qid], direct_answers=direct[qid], correct_choice_idx=correct[qid])
        records.append(record)
    ds = AOKVQAEvalDataset.from_records(records, answer_list=["red", "circle", "yes", "no"])
    ds._image = lambda record: record["image"]  # the records hold the image tensors themselves
    return ds


def test_aok_vqa_direct_answers_and_multiple_choice():
    task = setup("aok_vqa", inference_method="rank", num_ans_candidates=2, prompt="Q: {} A:")
    ds = aok_dataset()
    model = FakeVQA({}, picks={"a": "red", "b": "circle", "c": "cab"})
    results = task.evaluation(model, loader(ds), dataset=ds)
    # direct answers ranked over the dataset's answer list, one call per batch of 2, then one per question
    da_calls = [c for c in model.calls if c["answer_list"] == ds.answer_list]
    mc_calls = [c for c in model.calls if c["answer_list"] != ds.answer_list]
    assert [c["n"] for c in da_calls] == [2, 1] and all(c["num_ans_candidates"] == 2 for c in da_calls)
    assert [c["answer_list"] for c in mc_calls] == list(CHOICES.values())
    assert all(c["n"] == 1 and c["num_ans_candidates"] == 4 and c["prompt"] == "Q: {} A:" for c in mc_calls)
    assert results == [{"question_id": "a", "answer": "red", "mc_answer": "red"},
                       {"question_id": "b", "answer": "circle", "mc_answer": "circle"},
                       {"question_id": "c", "answer": "red", "mc_answer": "cab"}]  # "cab" is no candidate answer
    metrics = task.after_evaluation(results, "val", 0, dataset=ds)
    # DA: "red" 2 of 10 -> 2/3, "circle" 10 -> 1, "red" 0 -> 0; MC: a right, b wrong (triangle), c right (cab)
    assert metrics == {"agg_metrics": pytest.approx(100 * 5 / 9), "acc": pytest.approx(100 * 5 / 9),
                       "mc_acc": pytest.approx(100 * 2 / 3), "num_questions": 3}


def test_aok_vqa_without_ranking_reports_direct_answers_only(caplog):
    class GenerateOnly(nn.Module):
        def predict_answers(self, samples, inference_method="generate", num_beams=3, max_len=10, min_len=1,
                            num_ans_candidates=128, prompt=None) -> List[str]:
            return ["maroon"] * len(samples["text_input"])

    task = setup("aok_vqa")
    ds = aok_dataset()
    ds.answer_list = None  # generation needs none; this model could not take one
    results = task.evaluation(GenerateOnly(), loader(ds), dataset=ds)
    metrics = task.after_evaluation(results, "val", 0, dataset=ds)
    assert metrics["acc"] == pytest.approx(100 * (1 + 0 + 0) / 3)  # "maroon": 8 of a's 10 answers
    assert metrics["mc_acc"] == "not scored (GenerateOnly.predict_answers takes no answer_list to rank)"
    ds = aok_dataset()

    class NoRank(FakeVQA):
        def predict_answers(self, samples, inference_method="generate", **kwargs):
            if inference_method == "rank":
                raise NotImplementedError("this model only generates")
            return super().predict_answers(samples, inference_method, **kwargs)

    results = task.evaluation(NoRank({"a": "maroon", "b": "circle", "c": "no"}), loader(ds), dataset=ds)
    assert all("mc_answer" not in r for r in results)
    with caplog.at_level(logging.WARNING):
        metrics = task.after_evaluation(results, "val", 0, dataset=ds)
    assert metrics["acc"] == pytest.approx(100.0) and metrics["mc_acc"].startswith("not scored (NoRank cannot rank")
    assert "multiple-choice accuracy not scored" in caplog.text
    off = setup("aok_vqa", multiple_choice=False)
    model = FakeVQA({"a": "red", "b": "circle", "c": "no"})
    results = off.evaluation(model, loader(ds), dataset=ds)
    assert len(model.calls) == 2 and "mc_acc" not in off.after_evaluation(results, "val", 0, dataset=ds)


def test_aok_vqa_test_split_saves_the_leaderboard_file(tmp_path):
    task = setup("aok_vqa")
    ds = aok_dataset(with_answers=False)
    model = FakeVQA({"a": "red", "b": "circle", "c": "no"}, picks={"b": "square"})
    results = task.evaluation(model, loader(ds), dataset=ds)
    metrics = task.after_evaluation(results, "test", None, output_dir=tmp_path, dataset=ds)
    assert metrics == {"agg_metrics": 0.0, "scored": "no (split has no answers)"}
    board = json.loads((tmp_path / "result" / "test_final_leaderboard.json").read_text())
    assert board == {"a": {"direct_answer": "red", "multiple_choice": "red"},
                     "b": {"direct_answer": "circle", "multiple_choice": "square"},
                     "c": {"direct_answer": "no", "multiple_choice": "yes"}}


# ------------------------------------------------------------------ gqa and vqa
def vqa_dataset(answers: Dict[Any, Any]) -> VQAEvalDataset:
    records = [{"question_id": q, "question": f"{q}?", "image": torch.zeros(3, 4, 4), "answer": a}
               for q, a in answers.items()]
    ds = VQAEvalDataset.from_records(records)
    ds._image = lambda record: record["image"]
    return ds


def test_gqa_exact_match_after_lavis_normalisation():
    task = setup("gqa", prompt="Question: {} Short answer:", length_penalty=0.5)
    ds = vqa_dataset({"1": "yes", "2": "the table", "3": "2", "4": "left"})
    model = FakeVQA({"1": "Yes", "2": "table.", "3": "two", "4": "right"})
    results = task.evaluation(model, loader(ds), dataset=ds)
    assert model.calls[0]["prompt"] == "Question: {} Short answer:" and model.calls[0]["length_penalty"] == 0.5
    assert task.after_evaluation(results, "val", 0, dataset=ds) == {
        "agg_metrics": pytest.approx(75.0), "acc": pytest.approx(75.0), "num_questions": 4}
    test = vqa_dataset({"1": None, "2": None})
    assert task.after_evaluation(task.evaluation(model, loader(test), dataset=test), "test", 0, dataset=test)[
        "scored"] == "no (split has no answers)"


def test_vqa_length_penalty_reaches_the_model_only_when_set(caplog):
    ds = vqa_dataset({1: ["yes"] * 10})
    model = FakeVQA({1: "yes"})
    setup("vqa").evaluation(model, loader(ds), dataset=ds)
    assert "length_penalty" not in model.calls[-1]  # the model's own default, as LAVIS's VQA task
    setup("vqa", length_penalty=-1).evaluation(model, loader(ds), dataset=ds)
    assert model.calls[-1]["length_penalty"] == -1

    class Strict(nn.Module):  # no length_penalty, no **kwargs
        def predict_answers(self, samples, inference_method="generate", answer_list=None, num_beams=3, max_len=10,
                            min_len=1, num_ans_candidates=128) -> List[str]:
            return ["yes"] * len(samples["text_input"])

    task = setup("vqa", length_penalty=2.0)
    with caplog.at_level(logging.WARNING):
        results = task.evaluation(Strict(), loader(ds), dataset=ds)
    assert results == [{"question_id": 1, "answer": "yes"}]
    assert "run.length_penalty=2.0 ignored: Strict.predict_answers takes no length_penalty" in caplog.text


# ------------------------------------------------------------------ captioning run keys
class FakeCaptioner(nn.Module):
    def __init__(self, with_length_penalty: bool = True):
        super().__init__()
        self.calls: List[Dict[str, Any]] = []
        self.with_length_penalty = with_length_penalty

    def generate(self, samples, use_nucleus_sampling=False, num_beams=3, max_length=30, min_length=10, top_p=0.9,
                 repetition_penalty=1.0, **kwargs) -> List[str]:
        if kwargs and not self.with_length_penalty:
            raise TypeError(f"unexpected {sorted(kwargs)}")
        self.calls.append({"image_id": list(samples["image_id"]), "n_images": len(samples["image"]), **kwargs})
        return [f"caption {int(i)}" for i in samples["image_id"]]


class BlipLike(FakeCaptioner):
    def generate(self, samples, use_nucleus_sampling=False, num_beams=3, max_length=30, min_length=10, top_p=0.9,
                 repetition_penalty=1.0) -> List[str]:
        return super().generate(samples)


class RecordingScorer:
    def __init__(self):
        self.seen = None

    def __call__(self, truth, predictions):
        self.seen = (truth, predictions)
        return {"CIDEr": 1.5, "Bleu_4": 0.25}


def caption_batches(ids: Sequence[int]):
    return [{"image": torch.zeros(len(ids[i:i + 3]), 3, 4, 4), "image_id": torch.tensor(ids[i:i + 3])}
            for i in range(0, len(ids), 3)]


def test_captioning_img_ids_and_annotation_file_as_lavis_nocaps(tmp_path):
    refs = {"annotations": [{"image_id": i, "caption": f"ref {i} {k}", "id": 2 * i + k} for i in range(6) for k in (0, 1)]}
    (tmp_path / "nocaps_val_4500_captions.json").write_text(json.dumps(refs))
    task = setup("captioning", img_ids=[1, 4, 5, 9], annotation_file="nocaps_val_4500_captions.json",
                 length_penalty=1.0, cache_root=str(tmp_path))
    model = FakeCaptioner()
    results = task.evaluation(model, caption_batches(list(range(6))))
    # only the listed images are captioned: 1 of the first batch, 4 and 5 of the second
    assert [c["image_id"] for c in model.calls] == [[1], [4, 5]] and [c["n_images"] for c in model.calls] == [1, 2]
    assert all(c["length_penalty"] == 1.0 for c in model.calls)
    assert results == [{"image_id": i, "caption": f"caption {i}"} for i in (1, 4, 5)]
    task._scorer = scorer = RecordingScorer()
    metrics = task.after_evaluation(results, "val", 0)
    assert metrics == {"CIDEr": 1.5, "Bleu_4": 0.25, "agg_metrics": 1.75}
    truth, predictions = scorer.seen
    assert truth == {i: [f"ref {i} 0", f"ref {i} 1"] for i in (1, 4, 5)} and list(predictions) == [1, 4, 5]
    with pytest.raises(ValueError, match=r"1 predicted image id\(s\) are not in run.annotation_file"):
        task.after_evaluation(results + [{"image_id": 77, "caption": "x"}], "val", 0)


def test_captioning_run_key_checks(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="run.annotation_file: no file .*missing.json"):
        setup("captioning", annotation_file="missing.json", cache_root=str(tmp_path))
    with pytest.raises(ValueError, match="captioning generates its captions; got 'rank'"):
        setup("captioning", inference_method="rank")
    task = setup("captioning", length_penalty=1.0)
    with caplog.at_level(logging.WARNING):
        results = task.evaluation(BlipLike(with_length_penalty=False), caption_batches([3, 4]))
    assert len(results) == 2 and "run.length_penalty=1.0 ignored: BlipLike.generate takes no length_penalty" in caplog.text
    no_refs = VQAEvalDataset.from_records([])  # anything with an empty ground_truth()
    no_refs.ground_truth = lambda: {0: [], 1: []}
    with pytest.raises(ValueError, match="the val split has no reference captions.*run.annotation_file"):
        task.after_evaluation(results, "val", 0, dataset=no_refs)
    assert setup("captioning", report_metric=False).after_evaluation(results, "val", 0) == {"agg_metrics": 0.0}


NOCAPS_PROJECT = """
datasets:
  nocaps:
    vis_processor: {eval: {name: blip_image_eval, image_size: 224}}
    text_processor: {eval: {name: blip_caption}}
run:
  task: captioning
  max_len: 80
  min_len: 10
  num_beams: 5
  inference_method: "generate"
  length_penalty: 1.
  annotation_file: https://nocaps.s3.amazonaws.com/nocaps_val_4500_captions.json
  img_ids: [2, 4, 5]
  evaluate: True
  valid_splits: ["val"]
"""


def test_lavis_captioning_and_vqa_run_keys_validate(tmp_path):
    path = tmp_path / "nocaps.yaml"
    path.write_text(NOCAPS_PROJECT)
    cfg = Config.from_file(str(path))
    assert (cfg.run_cfg.length_penalty, list(cfg.run_cfg.img_ids), cfg.run_cfg.inference_method) == (1.0, [2, 4, 5], "generate")
    assert cfg.datasets_cfg.nocaps.build_info.annotations.val.storage == "nocaps/annotations/nocaps_val.json"
    with pytest.raises(ConfigError, match="run.img_ids must be list or null"):
        Config.from_file(str(path), options=["run.img_ids=3"])
    aok = tmp_path / "aok.yaml"
    aok.write_text("datasets: {aok_vqa: {}}\nrun: {task: aok_vqa, inference_method: rank, num_ans_candidates: 128,"
                   " multiple_choice: false}\n")
    assert Config.from_file(str(aok)).run_cfg.multiple_choice is False
    gqa = tmp_path / "gqa.yaml"
    gqa.write_text("datasets: {gqa: {type: balanced_testdev}}\nrun: {task: gqa, prompt: 'Question: {} Short answer:'}\n")
    cfg = Config.from_file(str(gqa))
    assert cfg.datasets_cfg.gqa.build_info.annotations.val.storage == ["gqa/annotations/testdev_balanced_questions.json"]
    nlvr = tmp_path / "nlvr.yaml"
    nlvr.write_text("datasets: {nlvr: {}}\nrun: {task: multimodal_classification}\n")
    assert Config.from_file(str(nlvr)).run_cfg.segments == 1
