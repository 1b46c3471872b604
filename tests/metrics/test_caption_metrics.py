"""Caption metrics against values computed by hand.

METEOR's JVM takes 5-20 s to start, so one module-scoped ``CaptionScorer`` scores
every corpus below; ``caption_metrics`` (one JVM per call) runs once.
"""
from __future__ import annotations

import logging
import math
import threading
import urllib.request
from types import SimpleNamespace

import pytest

import tests.helpers  # noqa: F401  (offline hub)
import vlft.metrics.caption as caption
from vlft.metrics import CaptionScorer, caption_metrics, spice_unavailable_reason

BIKE = "a man riding a red bike down the street"
BUS = "a red bus drives along the road"
CATS = "two cats sleep near windows"

CORPORA = {
    # prediction differs only in case and punctuation, which PTB tokenisation removes
    "identical": ({1: [BIKE]}, {1: "A man riding a red bike down the street."}),
    "bleu_hand": ({"a": ["the cat is on the mat"]}, {"a": "the the the cat"}),
    # no word is shared between the two images, so every n-gram has df=1
    "cider_both_right": ({1: [BUS], 2: [CATS]}, {1: BUS, 2: CATS}),
    "cider_one_wrong": ({1: [BUS], 2: [CATS]}, {1: BUS, 2: "green trees grow tall here"}),
    "all_empty": ({1: ["a dog runs"], 2: ["a cat"]}, {1: "", 2: ""}),
    "one_empty_short": ({1: ["a dog runs"], 2: ["a cat sits"]}, {1: "", 2: "a cat sits"}),
    # a carriage return inside a reference: raw pycocoevalcap tokenises it as a line
    # break and shifts every later caption onto the wrong image
    "carriage_return": ({1: ["a dog\rruns on the grass"], 2: ["a cat sleeps on a sofa"]},
                        {1: "a dog runs on the grass", 2: "a cat sleeps on a sofa"}),
}


@pytest.fixture(scope="module")
def scorer():
    with CaptionScorer(spice=False) as shared:
        yield shared


@pytest.fixture(scope="module")
def scores(scorer):
    return {name: scorer(gt, pred) for name, (gt, pred) in CORPORA.items()}


class _BorrowedMeteor:
    """What ``caption_metrics`` gets instead of a second METEOR JVM: the shared one's
    scoring, with a process and lock of its own for ``close()`` to end."""

    def __init__(self, meteor):
        self.compute_score = meteor.compute_score
        def noop():
            return None

        self.meteor_p = SimpleNamespace(stdin=SimpleNamespace(close=noop), kill=noop, wait=noop)
        self.lock = threading.Lock()


def test_all_metrics_reported_on_their_scale(scores):
    for name, result in scores.items():
        assert list(result) == list(caption.METRIC_NAMES), name
        assert all(isinstance(v, float) and math.isfinite(v) for v in result.values()), name
        assert all(0.0 <= result[k] <= 1.0 + 1e-9 for k in caption.METRIC_NAMES if k != "CIDEr"), name
        assert 0.0 <= result["CIDEr"] <= 10.0 + 1e-9, name


def test_identical_caption_scores_one(scores):
    s = scores["identical"]
    for n in range(1, 5):
        assert s[f"Bleu_{n}"] == pytest.approx(1.0, abs=1e-6)  # pycocoevalcap's 1e-9 smoothing
    assert s["METEOR"] == pytest.approx(1.0, abs=1e-9)
    assert s["ROUGE_L"] == pytest.approx(1.0, abs=1e-9)
    # CIDEr-D weights n-grams by log(N_images / df): a one-image corpus weights all by 0
    assert s["CIDEr"] == 0.0


def test_bleu_and_rouge_by_hand(scores):
    s = scores["bleu_hand"]
    # hypothesis "the the the cat" (4 words) vs "the cat is on the mat" (6 words):
    # clipped unigrams: "the" 3 -> 2 (the reference has two), "cat" 1 => p1 = 3/4;
    # bigrams "the the" x2, "the cat": only "the cat" matches => p2 = 1/3; no trigram matches.
    # brevity penalty exp(1 - r/c) = exp(1 - 6/4)
    bp = math.exp(1 - 6 / 4)
    assert s["Bleu_1"] == pytest.approx(3 / 4 * bp, abs=1e-6)
    assert s["Bleu_2"] == pytest.approx(math.sqrt(3 / 4 * 1 / 3) * bp, abs=1e-6)
    assert s["Bleu_3"] < 1e-5 and s["Bleu_4"] < 1e-5  # zero up to pycocoevalcap's 1e-15 smoothing
    # ROUGE-L: LCS = 2 ("the cat"), P = 2/4, R = 2/6, F_beta with beta = 1.2
    p, r, beta2 = 2 / 4, 2 / 6, 1.2**2
    assert s["ROUGE_L"] == pytest.approx((1 + beta2) * p * r / (r + beta2 * p), abs=1e-6)
    assert 0.0 < s["METEOR"] < 1.0


def test_cider_by_hand(scores):
    # Two images, disjoint vocabularies: every reference n-gram has df = 1 and weight
    # log(2) - log(1). A caption equal to its only reference has cosine 1 for n = 1..4
    # and no length penalty: 10 * mean(1, 1, 1, 1) = 10. A caption sharing nothing scores 0.
    assert scores["cider_both_right"]["CIDEr"] == pytest.approx(10.0, abs=1e-9)
    assert scores["cider_one_wrong"]["CIDEr"] == pytest.approx(5.0, abs=1e-9)
    assert scores["cider_both_right"]["CIDEr"] > scores["cider_one_wrong"]["CIDEr"]
    # "a cat sits" is exact but has no 4-gram: cosines (1, 1, 1, 0) ("a" has df = 2,
    # weight 0, and drops out of the unigram cosine) => 7.5; the empty caption scores 0
    assert scores["one_empty_short"]["CIDEr"] == pytest.approx(7.5 / 2, abs=1e-9)


def test_empty_predictions_score_zero(scores):
    assert scores["all_empty"] == {k: pytest.approx(0.0, abs=1e-12) for k in caption.METRIC_NAMES}
    s = scores["one_empty_short"]
    assert s["ROUGE_L"] == pytest.approx(0.5, abs=1e-9)  # mean of 0 and 1


def test_line_breaks_inside_captions_do_not_shift_images(scores):
    s = scores["carriage_return"]
    assert s["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and s["ROUGE_L"] == pytest.approx(1.0, abs=1e-9)


def test_one_shot_function_skips_spice_without_corenlp(scorer, scores, tmp_path, monkeypatch, caplog):
    import pycocoevalcap.meteor.meteor as meteor_module

    monkeypatch.setattr(meteor_module, "Meteor", lambda: _BorrowedMeteor(scorer._meteor))
    def no_network(*args, **kwargs):
        raise AssertionError("SPICE must not try to download CoreNLP")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setattr(caption, "_spice_lib_dir", lambda: str(tmp_path))  # an empty lib folder
    reason = spice_unavailable_reason()
    assert reason is not None and "stanford-corenlp-3.6.0.jar" in reason and str(tmp_path) in reason

    with caplog.at_level(logging.WARNING, logger="vlft.metrics.caption"):
        result = caption_metrics(*CORPORA["bleu_hand"], spice=True)
    assert "SPICE" not in result
    assert result == pytest.approx(scores["bleu_hand"], abs=1e-12)  # same numbers as the shared scorer
    assert [r.getMessage() for r in caplog.records if "SPICE skipped" in r.getMessage()] == [f"SPICE skipped: {reason}"]


def test_spice_warning_is_logged_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(caption, "_spice_lib_dir", lambda: str(tmp_path / "once"))
    with caplog.at_level(logging.WARNING, logger="vlft.metrics.caption"):
        assert caption._spice_score({}, {}) is None
        assert caption._spice_score({}, {}) is None
    assert sum("SPICE skipped" in r.getMessage() for r in caplog.records) == 1


def test_spice_this_machine(scores):
    # here the CoreNLP jars are absent (pycocoevalcap ships without them); if someone
    # adds them, SPICE becomes available and the reason disappears
    reason = spice_unavailable_reason()
    assert reason is None or "stanford-corenlp-3.6.0" in reason or "Java" in reason


class _FakeSpice:
    result = None

    def compute_score(self, gts, res):
        if self.result is None:
            raise RuntimeError("java.lang.OutOfMemoryError: Java heap space")
        return self.result, []


def test_spice_failure_is_reported_not_raised(monkeypatch, caplog):
    import pycocoevalcap.spice.spice as spice_module

    monkeypatch.setattr(caption, "spice_unavailable_reason", lambda: None)
    monkeypatch.setattr(spice_module, "Spice", _FakeSpice)
    with caplog.at_level(logging.WARNING, logger="vlft.metrics.caption"):
        assert caption._spice_score({1: ["a"]}, {1: ["a"]}) is None
    assert any("OutOfMemoryError" in r.getMessage() for r in caplog.records)

    monkeypatch.setattr(_FakeSpice, "result", 0.25)
    assert caption._spice_score({1: ["a"]}, {1: ["a"]}) == 0.25


def test_spice_joins_the_result_when_it_runs(scores, monkeypatch):
    import pycocoevalcap.spice.spice as spice_module

    monkeypatch.setattr(caption, "spice_unavailable_reason", lambda: None)
    monkeypatch.setattr(_FakeSpice, "result", 0.5)
    monkeypatch.setattr(spice_module, "Spice", _FakeSpice)
    with CaptionScorer(spice=True) as scorer:
        # no METEOR JVM is started for this check: hand the scorer a stand-in
        monkeypatch.setattr(scorer, "_start_meteor", lambda: None)
        monkeypatch.setattr(scorer, "_meteor_score", lambda gts, res: 0.125)
        result = scorer(*CORPORA["identical"])
    assert result["SPICE"] == 0.5 and result["METEOR"] == 0.125
    assert list(result) == [*caption.METRIC_NAMES, "SPICE"]


@pytest.mark.parametrize("ground_truth,predictions,example", [
    ({1: ["a dog"]}, {1: "a dog", 7: "a cat"}, "7"),
    ({1: ["a dog"], "img_9": ["a cat"]}, {1: "a dog"}, "'img_9'"),
])
def test_ids_must_match(ground_truth, predictions, example):
    with pytest.raises(ValueError, match=f"e.g. {example}"):
        caption_metrics(ground_truth, predictions)


def test_str_and_int_ids_are_told_apart_with_a_hint():
    with pytest.raises(ValueError, match="str on one side and int on the other"):
        caption_metrics({"1": ["a dog"]}, {1: "a dog"})


@pytest.mark.parametrize("ground_truth,predictions,error,match", [
    ({1: "a dog"}, {1: "a dog"}, TypeError, r"ground_truth\[1\] must be a list"),
    ({1: []}, {1: "a dog"}, ValueError, "has no reference caption"),
    ({1: ["a dog"]}, {1: ["a dog"]}, TypeError, r"predictions\[1\] must be one caption string"),
    ({}, {}, ValueError, "nothing|no predictions"),
])
def test_malformed_inputs_fail_clearly(ground_truth, predictions, error, match):
    with pytest.raises(error, match=match):
        caption_metrics(ground_truth, predictions)
