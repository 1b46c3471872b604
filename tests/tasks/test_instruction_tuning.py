"""Task instruction_tuning: token-weighted validation loss, generated answers scored with
VQA accuracy (per question type for the shapes chat), -loss when nothing is scored; the
reference's task name; the vqa and captioning tasks drive minigpt4qwen too."""
from __future__ import annotations

import tests.helpers  # noqa: F401

import pytest
import torch

import vlft.tasks  # noqa: F401  (registers the tasks)
from vlft.common.registry import registry
from vlft.datasets.synthetic_chat import ShapesChatDataset
from vlft.tasks.instruction_tuning import InstructionTuningTask


class Scripted(torch.nn.Module):
    """Losses and answers decided by the test; records what generate was given."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.calls = answers, []

    def forward(self, samples):
        n = len(samples["conversation"])
        return {"loss": torch.tensor(float(n)), "n_label_tokens": torch.tensor(2 * n)}

    def generate(self, samples, **decoding):
        self.calls.append((list(samples["sample_id"]), samples["n_images"].tolist(), decoding))
        return [self.answers[s] for s in samples["sample_id"]]


def test_loss_and_vqa_accuracy_per_question_type():
    data = ShapesChatDataset(split="val", info={"num_samples": 8})
    truth = data.ground_truth()
    ids = list(truth)
    answers = {s: truth[s][0] if k % 2 == 0 else "purple" for k, s in enumerate(ids)}  # half right
    model = Scripted(answers)
    task = InstructionTuningTask(max_len=5)
    batches = [data.collater([data[i] for i in range(0, 3)]), data.collater([data[i] for i in range(3, 8)])]
    results = task.evaluation(model, batches, dataset=data)
    metrics = task.after_evaluation(results, "val", 0, dataset=data)
    assert metrics["loss"] == pytest.approx((3 * 6 + 5 * 10) / 16)  # weighted by the learned tokens
    assert metrics["overall"] == metrics["agg_metrics"] == 50.0
    assert metrics["acc_q0"] == 100.0 and metrics["acc_q1"] == 0.0  # even sample ids are right
    assert model.calls[0][2]["max_length"] == 5


def test_unscored_splits_and_partly_answered_batches():
    data = ShapesChatDataset(split="val", info={"num_samples": 4})
    batch = data.collater([data[i] for i in range(4)])
    batch["answer"][1] = None  # a conversation that ends with the user: loss only
    model = Scripted({s: "x" for s in batch["sample_id"]})
    task = InstructionTuningTask()
    task._score = True
    results = task.valid_step(model, batch)
    assert model.calls[0][0] == [batch["sample_id"][i] for i in (0, 2, 3)] and model.calls[0][1] == [1, 1, 1]
    assert len([r for r in results if "answer" in r]) == 3

    quiet = InstructionTuningTask(answer_metric="none")
    metrics = quiet.after_evaluation(quiet.evaluation(model, [batch], dataset=data), "val", 0, dataset=data)
    assert metrics == {"loss": 4.0, "agg_metrics": -4.0}
    with pytest.raises(ValueError, match="answer_metric"):
        InstructionTuningTask(answer_metric="bleu")
    assert registry.get_task_class("deepspeed_image_text_pretrain") is InstructionTuningTask


def test_vqa_and_captioning_tasks_drive_the_model():
    from tests.models.test_minigpt4qwen import build, images
    from vlft.tasks.captioning import CaptionTask
    from vlft.tasks.vqa import VQATask

    model = build().eval()
    vqa = VQATask(inference_method="rank", prompt="Question: {} Short answer:")
    vqa._answer_list = ["red", "blue", "yes", "no"]
    out = vqa.valid_step(model, {"image": images(2), "text_input": ["what colour?", "is it red?"],
                                 "question_id": [1, 2]})
    assert [r["question_id"] for r in out] == [1, 2] and {r["answer"] for r in out} <= {"red", "blue", "yes", "no"}
    caps = CaptionTask(num_beams=1, max_len=4, min_len=1).valid_step(model, {"image": images(2), "image_id": ["a", "b"]})
    assert [r["image_id"] for r in caps] == ["a", "b"] and all(isinstance(r["caption"], str) for r in caps)
