"""Retrieval recall on small score matrices whose ranks are worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlft.metrics.retrieval import retrieval_metrics

# 3 images x 6 texts, texts 2i and 2i+1 belong to image i
IMG2TXT = [[0, 1], [2, 3], [4, 5]]
TXT2IMG = [0, 0, 1, 1, 2, 2]
SCORE_I2T = np.array([
    # t0   t1   t2   t3   t4   t5
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],  # image 0: t0 is first                      -> rank 0
    [0.7, 0.6, 0.5, 0.1, 0.2, 0.3],  # image 1: t2 after t0, t1 (t3 is last)     -> rank 2
    [0.1, 0.2, 0.3, 0.9, 0.4, 0.8],  # image 2: t5 after t3                      -> rank 1
])
SCORE_T2I = np.array([
    # i0   i1   i2
    [0.9, 0.1, 0.2],  # t0 -> image 0 first                                      -> rank 0
    [0.2, 0.5, 0.1],  # t1 -> image 0 after image 1                              -> rank 1
    [0.1, 0.8, 0.3],  # t2 -> image 1 first                                      -> rank 0
    [0.6, 0.4, 0.5],  # t3 -> image 1 last                                       -> rank 2
    [0.3, 0.2, 0.7],  # t4 -> image 2 first                                      -> rank 0
    [0.5, 0.5, 0.5],  # t5 -> all tied: the lower index ranks first, image 2 last -> rank 2
])

# image -> text ranks (0, 2, 1): R@1 = 1/3; every rank < 5
TXT_R1 = 100 / 3
TXT_R_MEAN = (100 / 3 + 100 + 100) / 3  # 700/9 = 77.78
# text -> image ranks (0, 1, 0, 2, 0, 2): R@1 = 3/6; every rank < 5
IMG_R_MEAN = (50 + 100 + 100) / 3  # 250/3 = 83.33
EXPECTED = {
    "txt_r1": TXT_R1, "txt_r5": 100.0, "txt_r10": 100.0, "txt_r_mean": TXT_R_MEAN,
    "img_r1": 50.0, "img_r5": 100.0, "img_r10": 100.0, "img_r_mean": IMG_R_MEAN,
    "r_mean": (TXT_R_MEAN + IMG_R_MEAN) / 2,  # 725/9 = 80.56
    "agg_metrics": TXT_R_MEAN,  # as LAVIS: image -> text
}


def test_recalls_by_hand():
    scores = retrieval_metrics(SCORE_I2T, SCORE_T2I, IMG2TXT, TXT2IMG)
    assert list(scores) == list(EXPECTED)
    assert scores == {k: pytest.approx(v, abs=1e-9) for k, v in EXPECTED.items()}
    assert scores["r_mean"] == pytest.approx(725 / 9)


def test_torch_inputs_and_dict_mappings_give_the_same_numbers():
    # LAVIS's datasets build img2txt / txt2img as dicts keyed by index; bf16 holds these scores' order
    scores = retrieval_metrics(
        torch.tensor(SCORE_I2T, dtype=torch.bfloat16),
        torch.tensor(SCORE_T2I, dtype=torch.float64, requires_grad=True),
        {i: texts for i, texts in enumerate(IMG2TXT)},
        {t: torch.tensor(image) for t, image in enumerate(TXT2IMG)},
    )
    assert scores == {k: pytest.approx(v, abs=1e-9) for k, v in EXPECTED.items()}


def test_r5_and_r10_boundaries():
    # 12 images, 12 texts, text i belongs to image i. Row i scores the i texts (images)
    # before it 1.0, its own 0.5, the rest 0.0: item i ranks exactly i (0-based).
    # Ranks 0..11 => R@1 = 1/12, R@5 = 5/12 (ranks 0-4), R@10 = 10/12 (ranks 0-9).
    n = 12
    scores = np.tril(np.ones((n, n)), k=-1) + 0.5 * np.eye(n)
    result = retrieval_metrics(scores, scores, [[i] for i in range(n)], list(range(n)))
    for prefix in ("txt", "img"):
        assert result[f"{prefix}_r1"] == pytest.approx(100 / 12)
        assert result[f"{prefix}_r5"] == pytest.approx(500 / 12)
        assert result[f"{prefix}_r10"] == pytest.approx(1000 / 12)
        assert result[f"{prefix}_r_mean"] == pytest.approx((1 + 5 + 10) / 3 / 12 * 100)
    assert result["agg_metrics"] == pytest.approx(result["txt_r_mean"])


def test_ties_go_to_the_lower_index():
    # image 0's only text is t1, tied with t0 (before it) and t2 (after it): t0 outranks
    # it, t2 does not => rank 1. Image 1's text t2 ties t0 and t1, both before it => rank 2.
    i2t = np.array([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    # t0 -> image 1, scored below image 0 => rank 1; t1 -> image 0, tied, lower index => rank 0;
    # t2 -> image 1, tied with image 0 => rank 1
    t2i = np.array([[1.0, 0.0], [0.2, 0.2], [0.3, 0.3]])
    scores = retrieval_metrics(i2t, t2i, [[1], [2]], [1, 0, 1])
    # image ranks (1, 2): no hit at R@1; text ranks (1, 0, 1): one of three
    assert scores["txt_r1"] == 0.0 and scores["txt_r5"] == 100.0
    assert scores["img_r1"] == pytest.approx(100 / 3)


@pytest.mark.parametrize("args,error,message", [
    ((SCORE_I2T, SCORE_I2T, IMG2TXT, TXT2IMG), ValueError,
     r"score_t2i has shape \(3, 6\), expected \[n_texts, n_images\] = \(6, 3\)"),
    ((SCORE_I2T[0], SCORE_T2I, IMG2TXT, TXT2IMG), ValueError, r"score_i2t must be a 2-D score matrix, got shape \(6,\)"),
    ((np.zeros((0, 6)), np.zeros((6, 0)), [], TXT2IMG), ValueError, "at least one image and one text"),
    ((SCORE_I2T, SCORE_T2I, IMG2TXT[:2], TXT2IMG), ValueError, "img2txt has 2 entries, score_i2t has 3 images"),
    ((SCORE_I2T, SCORE_T2I, IMG2TXT, TXT2IMG[:5]), ValueError, "txt2img has 5 entries, score_t2i has 6 texts"),
    ((SCORE_I2T, SCORE_T2I, [[0, 1], [2, 6], [4, 5]], TXT2IMG), ValueError,
     r"img2txt\[1\] entry = 6 is out of range \(0..5\)"),
    ((SCORE_I2T, SCORE_T2I, [[0, 1], [], [2, 3, 4, 5]], TXT2IMG), ValueError, r"img2txt\[1\] is empty"),
    ((SCORE_I2T, SCORE_T2I, [[0, 1], 2, [4, 5]], TXT2IMG), TypeError, r"img2txt\[1\] must be a list of text indices"),
    ((SCORE_I2T, SCORE_T2I, IMG2TXT, [0, 0, 1, 1, 2, 1.5]), TypeError, r"txt2img\[5\] must be an integer index, got 1.5"),
    ((SCORE_I2T, SCORE_T2I, IMG2TXT, [0, 0, 1, 1, 2, -1]), ValueError, r"txt2img\[5\] = -1 is out of range \(0..2\)"),
    ((SCORE_I2T, SCORE_T2I, {0: [0, 1], 1: [2, 3], 5: [4, 5]}, TXT2IMG), ValueError, "img2txt has no entry for index 2"),
    ((np.where(np.eye(3, 6) > 0, np.nan, SCORE_I2T), SCORE_T2I, IMG2TXT, TXT2IMG), ValueError,
     r"score_i2t has NaN scores \(rows \[0, 1, 2\]\)"),
])
def test_bad_inputs_are_named(args, error, message):
    with pytest.raises(error, match=message):
        retrieval_metrics(*args)
