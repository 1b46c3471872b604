"""Every registered model, built from its ``tiny`` type through the zoo API (the way
timm tests every model): forward + backward on a batch its processors made, generation
or answering where the model has it, and a checkpoint save / load round trip."""
from __future__ import annotations

import tests.helpers  # noqa: F401  (HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch

import vlft.models  # noqa: F401  (registers the models)
from vlft.common.registry import registry
from vlft.datasets.synthetic_shapes import make_scene, scene_questions
from vlft.runners.checkpoint import atomic_save, model_state
from vlft.zoo import load_model_and_preprocess

MODELS = [n for n in registry.list_models() if registry.get_model_class(n).__module__.startswith("vlft.")]
#: models trained on question / answer batches rather than captions
VQA_MODELS = {"blip_vqa"}


def test_every_model_has_a_tiny_type():
    assert {"blip_caption", "blip_vqa", "blip2", "blip2_feature_extractor", "blip2_image_text_matching",
            "blip2_opt", "blip2_t5"} <= set(MODELS)
    for name in MODELS:
        assert "tiny" in registry.get_model_class(name).PRETRAINED_MODEL_CONFIG_DICT, name


def make_batch(name: str, vis, txt, n: int = 2) -> dict:
    scenes = [make_scene(i, image_size=48) for i in range(n)]
    batch = {"image": torch.stack([vis(s["image"]) for s in scenes]), "image_id": torch.arange(n),
             "label": torch.tensor([s["label"] for s in scenes])}
    if name in VQA_MODELS:
        qa = [scene_questions(i)[0] for i in range(n)]
        batch.update(text_input=[txt(q) if txt else q for q, _ in qa], answers=[a for _, a in qa],
                     weights=torch.ones(n), n_answers=torch.ones(n, dtype=torch.long))
    else:
        batch["text_input"] = [txt(s["caption"]) if txt else s["caption"] for s in scenes]
    return batch


@pytest.mark.parametrize("name", MODELS)
def test_tiny_model_trains_infers_and_reloads(name, tmp_path):
    torch.manual_seed(0)
    model, vis, txt = load_model_and_preprocess(name=name, model_type="tiny")
    batch = make_batch(name, vis["eval"], txt["train"])

    model.train()
    out = model(batch)
    assert torch.isfinite(out["loss"]), out
    out["loss"].backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

    model.eval()
    with torch.no_grad():
        if hasattr(model, "generate"):
            captions = model.generate(batch, num_beams=2, max_length=8, min_length=1)
            assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
        if hasattr(model, "predict_answers"):
            answers = model.predict_answers(batch, inference_method="rank", answer_list=["red", "blue", "yes"])
            assert len(answers) == 2 and set(answers) <= {"red", "blue", "yes"}

    # trainable weights saved as the runner saves them, loaded into a fresh model whose
    # frozen weights are the same (as when both start from the same pretrained weights)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.01)
    path = atomic_save({"model": model_state(model)}, tmp_path / "ckpt.pth")
    torch.manual_seed(0)
    fresh, _, _ = load_model_and_preprocess(name=name, model_type="tiny")
    fresh.load_checkpoint(str(path))
    fresh.eval()
    saved = model_state(model)
    fresh_state = fresh.state_dict()
    assert saved and all(torch.equal(v, fresh_state[k]) for k, v in saved.items())
    with torch.no_grad():  # the same loss (ITM's negatives are sampled: same seed)
        torch.manual_seed(2)
        expected = model(batch)["loss"]
        torch.manual_seed(2)
        assert torch.allclose(expected, fresh(batch)["loss"]), name
