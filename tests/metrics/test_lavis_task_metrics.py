"""A-OKVQA, GQA and classification accuracies against values worked out by hand, on
LAVIS's definitions (``lavis/tasks/vqa.py`` AOKVQATask / GQATask,
``lavis/tasks/multimodal_classification.py``)."""
from __future__ import annotations

import logging

import pytest

from vlft.metrics.classification import accuracy
from vlft.metrics.vqa import (
    aokvqa_direct_answer_accuracy,
    aokvqa_scores,
    gqa_scores,
    normalize_answer,
    normalize_gqa_answer,
)

TEN = ["ride"] * 4 + ["bus"] * 3 + ["taxi"] * 2 + ["walk"]


@pytest.mark.parametrize("prediction,expected", [
    ("ride", 1.0),        # 4 annotators: min(4 / 3, 1)
    ("bus", 1.0),         # 3: exactly 1
    ("taxi", 2 / 3),      # 2
    ("walk", 1 / 3),      # 1
    ("car", 0.0),
    ("Ride", 0.0),        # exact strings: no normalisation, as LAVIS and A-OKVQA's evaluation
    ("ride ", 0.0),
])
def test_aokvqa_direct_answer_accuracy(prediction, expected):
    assert aokvqa_direct_answer_accuracy(prediction, TEN) == pytest.approx(expected)


def test_aokvqa_direct_answer_accuracy_is_not_leave_one_out():
    # the VQA v2 metric gives 3 matching annotators of 10 0.9; A-OKVQA gives 1
    assert aokvqa_direct_answer_accuracy("bus", TEN) == 1.0


def test_aokvqa_scores_direct_answers_and_multiple_choice(caplog):
    truth = {"q1": TEN, "q2": ["cat"] * 10, "q3": ["two"] * 2 + ["2"] * 8, "q4": ["red"] * 10}
    predictions = {"q1": "taxi", "q2": "cat", "q3": "two"}  # q4 has no prediction: counts as wrong
    with caplog.at_level(logging.WARNING):
        scores = aokvqa_scores(predictions, truth)
    assert "1 of 4 questions have no prediction" in caplog.text
    # (2/3 + 1 + 2/3 + 0) / 4 = 7/12
    assert scores == {"agg_metrics": pytest.approx(100 * 7 / 12), "acc": pytest.approx(100 * 7 / 12),
                      "num_questions": 4}
    chosen = {"q1": "cab", "q2": "cat", "q3": "2", "q4": "blue"}
    correct = {"q1": "cab", "q2": "dog", "q3": "2", "q4": "red"}
    scores = aokvqa_scores(predictions, truth, chosen, correct)
    assert scores["mc_acc"] == pytest.approx(50.0) and scores["agg_metrics"] == pytest.approx(100 * 7 / 12)
    with pytest.raises(ValueError, match="not in ground_truth: 'q9'"):
        aokvqa_scores({"q9": "x"}, truth)


@pytest.mark.parametrize("raw,expected", [
    ("Yes.", "yes"),
    ("the two dogs", "2 dogs"),
    ("t-shirt", "t shirt"),
    ("black - white", "black white"),
    ("an apple!", "apple"),
    ("dont", "don't"),
    ("  left ", "left"),
])
def test_normalize_gqa_answer(raw, expected):
    assert normalize_gqa_answer(raw) == expected


def test_gqa_normalisation_skips_the_whitespace_step_as_lavis():
    # LAVIS's GQATask applies processPunctuation + processDigitArticle only; the VQA v2 evaluation
    # first turns newlines into spaces, so "-\n" touches a space there and every "-" is dropped
    assert normalize_gqa_answer("xy-\nt-shirt") == "xy t shirt"
    assert normalize_answer("xy-\nt-shirt") == "xy tshirt"


def test_gqa_scores_exact_match_after_normalisation():
    truth = {"a": ["yes"], "b": "the table", "c": "2", "d": ["left"], "e": ["red"]}
    predictions = {"a": "Yes", "b": "table.", "c": "two", "d": "right", "e": "red car"}
    scores = gqa_scores(predictions, truth)
    assert scores == {"agg_metrics": pytest.approx(60.0), "acc": pytest.approx(60.0), "num_questions": 5}
    assert gqa_scores({"a": "no"}, {"a": "yes", "b": "no"})["acc"] == 0.0  # b unanswered: wrong
    with pytest.raises(ValueError, match="no reference answer"):
        gqa_scores({"a": "x"}, {"a": []})


def test_classification_accuracy_is_a_fraction_as_lavis():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert accuracy(["yes", "no"], ["yes", "no"]) == 1.0
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        accuracy([], [])
