"""COCO box AP (pycocotools) on hand-built cases, grounding accuracy and OCR error rates."""
from __future__ import annotations

import pytest

from vlft.metrics.detection import box_iou, coco_map, grounding_accuracy
from vlft.metrics.text import edit_distance, error_rates


def gt(*boxes, image_id=1, category_id=1):
    """COCO ground truth of one image with ``[x, y, w, h]`` boxes of one category."""
    return {"images": [{"id": image_id, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": k + 1, "image_id": image_id, "category_id": category_id, "bbox": list(b),
                             "area": b[2] * b[3], "iscrowd": 0} for k, b in enumerate(boxes)]}


def det(box, score, image_id=1, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def test_perfect_detections_score_one():
    m = coco_map(gt([10, 10, 40, 40], [60, 60, 30, 30]), [det([10, 10, 40, 40], 0.9), det([60, 60, 30, 30], 0.8)])
    assert m["mAP"] == pytest.approx(1.0) and m["mAP50"] == pytest.approx(1.0) and m["mAP75"] == pytest.approx(1.0)
    assert m["AR100"] == pytest.approx(1.0)
    # areas 1600 and 900: one medium, one small (< 32^2), no large
    assert m["mAP_small"] == pytest.approx(1.0) and m["mAP_medium"] == pytest.approx(1.0) and m["mAP_large"] == -1


def test_half_recall_is_51_of_101_points():
    # COCO interpolates precision at 101 recall points: precision 1 up to recall 0.5, then 0
    m = coco_map(gt([10, 10, 40, 40], [60, 60, 30, 30]), [det([10, 10, 40, 40], 0.9)])
    assert m["mAP"] == pytest.approx(51 / 101) and m["mAP50"] == pytest.approx(51 / 101)


def test_partial_overlap_counts_at_low_thresholds_only():
    # IoU = 40*34 / (40*40 + 40*40 - 40*34) = 0.739: a match at 0.50 .. 0.70 (5 of 10 thresholds)
    iou = float(box_iou([[10, 10, 50, 50]], [[10, 16, 50, 56]]))
    assert iou == pytest.approx(1360 / 1840)
    m = coco_map(gt([10, 10, 40, 40]), [det([10, 16, 40, 40], 0.9)])
    assert m["mAP50"] == pytest.approx(1.0) and m["mAP75"] == pytest.approx(0.0)
    assert m["mAP"] == pytest.approx(0.5)


def test_scores_rank_detections():
    truth = gt([10, 10, 40, 40])
    right, wrong = [10, 10, 40, 40], [60, 60, 30, 30]
    assert coco_map(truth, [det(right, 0.9), det(wrong, 0.8)])["mAP"] == pytest.approx(1.0)
    # the false positive ranked first: precision 1/2 at recall 1
    assert coco_map(truth, [det(right, 0.8), det(wrong, 0.9)])["mAP"] == pytest.approx(0.5)


def test_wrong_category_and_no_detections():
    truth = gt([10, 10, 40, 40])
    assert coco_map(truth, [det([10, 10, 40, 40], 0.9, category_id=2)])["mAP"] == pytest.approx(0.0)
    assert coco_map(truth, [])["mAP"] == 0.0
    with pytest.raises(ValueError, match="no annotations"):
        coco_map({"images": [], "annotations": [], "categories": []}, [])


def test_grounding_accuracy_uses_the_first_box_and_any_truth_box():
    truth = [[[0, 0, 10, 10]], [[0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10]]]
    predicted = [[[0, 0, 10, 10], [90, 90, 99, 99]],  # first box right
                 [[50, 50, 60, 61]],                  # matches the second truth box (IoU 0.91)
                 [[90, 90, 99, 99], [0, 0, 10, 10]]]  # first box wrong: the second does not count
    m = grounding_accuracy(predicted, truth)
    assert m == {"accuracy": pytest.approx(200 / 3), "phrases": 3, "correct": 2}
    assert grounding_accuracy([[]], [[[0, 0, 1, 1]]])["accuracy"] == 0.0


def test_character_and_word_error_rates():
    assert edit_distance("kitten", "sitting") == 3
    m = error_rates({1: "helo world", 2: "abc"}, {1: ["hello world"], 2: ["abd", "abc"]})
    # 1 edit over 11 + 3 characters (the closest reference of image 2 is exact)
    assert m["CER"] == pytest.approx(100 / 14)
    # "helo" vs "hello": 1 word of 2 + 1 (image 2's "abc")
    assert m["WER"] == pytest.approx(100 / 3)
    assert error_rates({1: "a  b"}, {1: [" a b "]})["CER"] == 0.0  # whitespace runs are one space
    with pytest.raises(ValueError, match="no reference"):
        error_rates({1: "x"}, {})
