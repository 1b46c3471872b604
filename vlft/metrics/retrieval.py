"""Image-text retrieval recall (R@1, R@5, R@10), with the keys LAVIS reports.

Image -> text: an image's rank is the best (lowest, 0-based) rank of any of its
ground-truth texts in its row of ``score_i2t`` sorted by descending score; R@K is the
share of images with rank < K. Text -> image: a text's rank is that of its one image
in its row of ``score_t2i``. Everything is in percent.

Two differences from LAVIS's retrieval task:

- Ties. LAVIS sorts with ``np.argsort(row)[::-1]``, so which of two equal scores
  comes first depends on numpy's sort. Here the order is that of a stable sort on
  the negated scores: of two equal scores the lower index ranks first, so a
  ground-truth item tied with an item before it ranks below it.
- ``agg_metrics`` (what checkpoint selection maximises) is ``txt_r_mean``
  (image -> text), as LAVIS reports it; ``r_mean`` averages both directions.
"""
from __future__ import annotations

import operator
from typing import Any, Dict, Mapping, Sequence, Union

import numpy as np

RECALL_AT = (1, 5, 10)


def _as_matrix(scores: Any, name: str) -> np.ndarray:
    if hasattr(scores, "detach"):  # a torch tensor: numpy has no bfloat16, and float32 holds fp16/bf16 exactly
        import torch

        scores = scores.detach().cpu()
        scores = scores if scores.dtype == torch.float64 else scores.float()
        scores = scores.numpy()
    matrix = np.asarray(scores)
    if matrix.ndim != 2:
        raise ValueError(f"retrieval_metrics: {name} must be a 2-D score matrix, got shape {tuple(matrix.shape)}")
    if matrix.dtype.kind not in "fiub":
        raise TypeError(f"retrieval_metrics: {name} must hold numbers, got dtype {matrix.dtype}")
    if matrix.dtype.kind == "f" and np.isnan(matrix).any():
        rows = np.unique(np.nonzero(np.isnan(matrix))[0])
        raise ValueError(f"retrieval_metrics: {name} has NaN scores (rows {rows[:5].tolist()}); NaN cannot be ranked")
    return matrix


def _index(value: Any, size: int, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)  # ints, numpy and 0-d torch integers; not floats or strings
    except TypeError:
        raise TypeError(f"retrieval_metrics: {what} must be an integer index, got {value!r}") from None
    if not 0 <= index < size:
        raise ValueError(f"retrieval_metrics: {what} = {index} is out of range (0..{size - 1})")
    return index


def _entry(table: Union[Sequence, Mapping], key: int, name: str) -> Any:
    try:
        return table[key]
    except (KeyError, IndexError):
        raise ValueError(f"retrieval_metrics: {name} has no entry for index {key}") from None


def _rank(row: np.ndarray, targets: Sequence[int]) -> int:
    """Best 0-based rank of ``targets`` in ``row`` sorted by descending score, ties to the lower index."""
    # the position of j in a stable descending sort = how many score higher, plus how
    # many before j score the same; no sort of the whole row is needed
    return min(int(np.count_nonzero(row > row[j]) + np.count_nonzero(row[:j] == row[j])) for j in targets)


def _recalls(ranks: np.ndarray, prefix: str) -> Dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in RECALL_AT}
    out[f"{prefix}_r_mean"] = sum(out.values()) / len(RECALL_AT)
    return out


def retrieval_metrics(
    score_i2t: Any,
    score_t2i: Any,
    img2txt: Union[Sequence[Sequence[int]], Mapping[int, Sequence[int]]],
    txt2img: Union[Sequence[int], Mapping[int, int]],
) -> Dict[str, float]:
    """Recall@1/5/10 in percent of image -> text and text -> image retrieval.

    ``score_i2t`` is ``[n_images, n_texts]``, ``score_t2i`` ``[n_texts, n_images]``
    (numpy arrays or torch tensors; higher = more similar). ``img2txt[i]`` lists the
    text indices of image ``i``; ``txt2img[t]`` is the image index of text ``t`` (lists
    or dicts keyed 0..n-1, as LAVIS's datasets build them). Returns ``txt_r1``,
    ``txt_r5``, ``txt_r10``, ``txt_r_mean`` (image -> text), ``img_r1`` .. ``img_r_mean``
    (text -> image), ``r_mean`` (mean of the two means) and ``agg_metrics`` (= ``txt_r_mean``, as LAVIS).
    """
    i2t = _as_matrix(score_i2t, "score_i2t")
    t2i = _as_matrix(score_t2i, "score_t2i")
    n_images, n_texts = i2t.shape
    if n_images == 0 or n_texts == 0:
        raise ValueError(f"retrieval_metrics: score_i2t has shape {i2t.shape}; need at least one image and one text")
    if t2i.shape != (n_texts, n_images):
        raise ValueError(
            f"retrieval_metrics: score_t2i has shape {t2i.shape}, expected [n_texts, n_images] = {(n_texts, n_images)} "
            f"(the transpose of score_i2t's {i2t.shape})"
        )
    if len(img2txt) != n_images:
        raise ValueError(f"retrieval_metrics: img2txt has {len(img2txt)} entries, score_i2t has {n_images} images (rows)")
    if len(txt2img) != n_texts:
        raise ValueError(f"retrieval_metrics: txt2img has {len(txt2img)} entries, score_t2i has {n_texts} texts (rows)")

    image_ranks = np.empty(n_images, dtype=np.int64)
    for i in range(n_images):
        texts = _entry(img2txt, i, "img2txt")
        if isinstance(texts, (str, bytes)) or not hasattr(texts, "__len__"):
            raise TypeError(f"retrieval_metrics: img2txt[{i}] must be a list of text indices, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError(f"retrieval_metrics: img2txt[{i}] is empty; every image needs a ground-truth text")
        image_ranks[i] = _rank(i2t[i], [_index(t, n_texts, f"img2txt[{i}] entry") for t in texts])

    text_ranks = np.empty(n_texts, dtype=np.int64)
    for t in range(n_texts):
        image = _index(_entry(txt2img, t, "txt2img"), n_images, f"txt2img[{t}]")
        text_ranks[t] = _rank(t2i[t], [image])

    scores = {**_recalls(image_ranks, "txt"), **_recalls(text_ranks, "img")}
    scores["r_mean"] = (scores["txt_r_mean"] + scores["img_r_mean"]) / 2
    scores["agg_metrics"] = scores["txt_r_mean"]
    return scores
