"""The detection, grounding and OCR tasks' scoring on hand-made predictions: COCO metrics,
malformed and unknown outputs counted (never raised), COCO results file, pictures."""
from __future__ import annotations

import tests.helpers  # noqa: F401

import json

import pytest
from PIL import Image

import vlft.datasets.builders  # noqa: F401
from vlft.datasets.caption_datasets import CaptionEvalDataset
from vlft.datasets.detection_datasets import DetectionEvalDataset, read_shapes_detection
from vlft.processors.florence2 import Florence2ImageEvalProcessor
from vlft.tasks.detection import DetectionTask
from vlft.tasks.grounding import GroundingTask
from vlft.tasks.ocr import OCRTask
from vlft.datasets.synthetic_shapes import make_scene


def shapes(n: int = 3, prompt: str = "<OD>") -> DetectionEvalDataset:
    source = read_shapes_detection("val", {"num_samples": n}, {"prompt": prompt}, {})
    return DetectionEvalDataset.from_source(source, Florence2ImageEvalProcessor(64), split="val")


def perfect(dataset: DetectionEvalDataset):
    return [{"instance_id": i, "image_id": rec["image_id"], "bboxes": rec["boxes"], "labels": rec["labels"],
             "scores": [0.9] * len(rec["labels"]), "text": "", "malformed": {}} for i, rec in enumerate(dataset.records)]


def test_perfect_predictions_score_one_and_files_are_written(tmp_path):
    dataset = shapes()
    task = DetectionTask(draw_images=2)
    task.run_cfg = {"log_backends": ["tensorboard"]}
    metrics = task.after_evaluation(perfect(dataset), "val", 0, output_dir=tmp_path, dataset=dataset)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["agg_metrics"] == pytest.approx(1.0)
    assert metrics["detections"] == 6 and metrics["outputs_with_malformed"] == 0 and metrics["unknown_labels"] == 0
    results = json.loads((tmp_path / "result" / "val_0_coco_results.json").read_text())
    x0, y0, x1, y1 = dataset.records[0]["boxes"][0]
    assert results[0] == {"image_id": dataset.records[0]["image_id"], "category_id": results[0]["category_id"],
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 0.9}
    picture = Image.open(tmp_path / "pictures" / "val_0.png")
    assert picture.width > 2 * 256 and picture.height >= 256  # 2 images: ground truth | prediction
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_malformed_and_unknown_outputs_are_counted_not_raised(tmp_path):
    dataset = shapes()
    results = perfect(dataset)
    results[0].update(bboxes=results[0]["bboxes"][:1], labels=results[0]["labels"][:1], scores=[0.9],
                      malformed={"incomplete_box": 1})
    results[1].update(bboxes=[[1, 1, 5, 5]], labels=["purple hexagon"], scores=[0.5], malformed={})
    results[2].update(bboxes=[], labels=[], scores=[], malformed={"empty_output": 1})
    metrics = DetectionTask(draw_images=0).after_evaluation(results, "val", "start", output_dir=tmp_path, dataset=dataset)
    assert metrics["malformed_incomplete_box"] == 1 and metrics["malformed_empty_output"] == 1
    assert metrics["unknown_labels"] == 1 and metrics["outputs_with_malformed"] == 2 and metrics["detections"] == 1
    assert 0 < metrics["mAP"] < 1
    assert not (tmp_path / "pictures").exists()


def test_detection_task_needs_a_box_model():
    with pytest.raises(TypeError, match="predict"):
        DetectionTask().valid_step(object(), {"instance_id": [0], "image_id": [0]})


def test_grounding_accuracy_per_phrase(tmp_path):
    dataset = shapes(prompt="<CAPTION_TO_PHRASE_GROUNDING>")
    assert [r["phrases"] for r in dataset.records][:2] == [["a red circle", "a red circle"], ["a red square", "a blue circle"]]
    results = perfect(dataset)
    # item 0 (one phrase twice): any of its boxes is right for it; item 1: phrases swapped, both wrong;
    # item 2: its first phrase only
    results[0]["bboxes"] = list(reversed(results[0]["bboxes"]))
    results[1]["labels"] = list(reversed(results[1]["labels"]))
    results[2].update(bboxes=results[2]["bboxes"][:1], labels=results[2]["labels"][:1], scores=[0.9])
    metrics = GroundingTask(draw_images=1).after_evaluation(results, "val", 1, output_dir=tmp_path, dataset=dataset)
    assert metrics["phrases"] == 6 and metrics["correct"] == 3 and metrics["agg_metrics"] == pytest.approx(50.0)
    assert metrics["phrases_without_box"] == 1
    assert (tmp_path / "pictures" / "val_1.png").is_file()


def test_ocr_error_rates():
    records = [{"image": Image.new("RGB", (8, 8)), "caption": "Hello World", "image_id": 1},
               {"image": Image.new("RGB", (8, 8)), "caption": "vlft 2.0", "image_id": 2}]
    dataset = CaptionEvalDataset.from_records(records)
    results = [{"image_id": 1, "text": "Hello World"}, {"image_id": 2, "text": "vlft 2,0"}]
    metrics = OCRTask().after_evaluation(results, "val", 0, dataset=dataset)
    assert metrics["CER"] == pytest.approx(100 / 19) and metrics["WER"] == pytest.approx(100 / 4)
    assert metrics["agg_metrics"] == pytest.approx(100 - 100 / 19)


def test_draw_cli_draws_a_folder(tmp_path):
    from vlft.tools.draw import main

    (tmp_path / "images").mkdir()
    for i in range(2):
        make_scene(i).get("image").save(tmp_path / "images" / f"scene{i}.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert main(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--arch", "florence2",
                 "--model-type", "tiny", "--num-beams", "1", "--max-length", "8"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png", "scene0.png", "scene1.png"]
    assert Image.open(tmp_path / "out" / "scene0.png").size == (256, 256)  # 64 px drawn at 4x
    assert main(["--images", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "--model-type", "tiny"]) == 2


def test_shapes_detection_labels():
    shape = read_shapes_detection("val", {"num_samples": 2}, {"labels": "shape"}, {})
    assert shape.categories == ["circle", "square", "triangle"] and shape.records[0]["labels"] == ["circle", "circle"]
    assert read_shapes_detection("val", {"num_samples": 2}, {}, {}).records[0]["labels"] == ["red circle", "red circle"]
    with pytest.raises(ValueError, match="colour_shape or shape"):
        read_shapes_detection("val", {"num_samples": 2}, {"labels": "colour"}, {})
