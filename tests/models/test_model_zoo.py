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
#: models that reason over two images per sentence (NLVR2)
PAIR_MODELS = {"blip_nlvr"}


def test_every_model_has_a_tiny_type():
    assert {"blip_caption", "blip_vqa", "blip_retrieval", "blip_image_text_matching", "blip_feature_extractor",
            "blip_nlvr", "blip_pretrain", "blip2", "blip2_feature_extractor", "blip2_image_text_matching",
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
    elif name in PAIR_MODELS:  # the second image of each pair is the next scene; true / false labels
        others = [make_scene(i + n, image_size=48) for i in range(n)]
        batch = {"image0": batch["image"], "image1": torch.stack([vis(s["image"]) for s in others]),
                 "label": torch.arange(n) % 2, "instance_id": [str(i) for i in range(n)],
                 "text_input": [txt(s["caption"]) if txt else s["caption"] for s in scenes]}
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
        if name in PAIR_MODELS:  # multimodal_classification's interface
            pred = model.predict(batch)
            assert pred["predictions"].dtype == torch.long and pred["predictions"].shape == (2,)
            assert torch.equal(pred["targets"], batch["label"])
        if hasattr(model, "retrieval_image_features"):
            img = model.retrieval_image_features(batch["image"])
            txt_feat = model.retrieval_text_features(batch["text_input"])
            sim = model.retrieval_similarity(img["feat"], txt_feat["feat"])
            assert sim.shape == (2, 2)
            assert model.retrieval_itm_score(img["embeds"], txt_feat["ids"], txt_feat["atts"]).shape == (2,)

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


_URL = "https://storage.googleapis.com/sfr-vision-language-research"
#: LAVIS's defaults for its BLIP model types (lavis/configs/models/blip_*.yaml)
LAVIS_TYPES = {
    ("blip_retrieval", "coco"): dict(image_size=384, queue_size=57600, embed_dim=256, alpha=0.4, negative_all_rank=False,
                                     vit_grad_ckpt=True, vit_ckpt_layer=4, load_finetuned=True,
                                     finetuned=f"{_URL}/LAVIS/models/BLIP/blip_coco_retrieval.pth",
                                     pretrained=f"{_URL}/BLIP/models/model_base_capfilt_large.pth"),
    ("blip_retrieval", "flickr"): dict(image_size=384, queue_size=57600, embed_dim=256, alpha=0.4, load_finetuned=True,
                                       finetuned=f"{_URL}/LAVIS/models/BLIP/blip_flickr_retrieval.pth"),
    ("blip_image_text_matching", "base"): dict(image_size=384, embed_dim=256, load_finetuned=True,
                                               finetuned=f"{_URL}/BLIP/models/model_base_retrieval_coco.pth"),
    ("blip_image_text_matching", "large"): dict(image_size=384, load_finetuned=True,
                                                finetuned=f"{_URL}/BLIP/models/model_large_retrieval_coco.pth"),
    ("blip_feature_extractor", "base"): dict(image_size=224, embed_dim=256,
                                             pretrained=f"{_URL}/BLIP/models/model_base_capfilt_large.pth"),
    ("blip_nlvr", "nlvr"): dict(image_size=384, num_classes=2, load_finetuned=True,
                                finetuned=f"{_URL}/BLIP/models/model_base_nlvr.pth"),
    ("blip_pretrain", "base"): dict(image_size=224, queue_size=57600, embed_dim=256, alpha=0.4, max_txt_len=30),
    ("blip_vqa", "okvqa"): dict(image_size=480, finetuned=f"{_URL}/LAVIS/models/BLIP/blip_okvqa.pth"),
    ("blip_vqa", "aokvqa"): dict(image_size=480, finetuned=f"{_URL}/LAVIS/models/BLIP/blip_aokvqa.pth"),
    ("blip_caption", "large"): dict(image_size=384, pretrained=f"{_URL}/BLIP/models/model_large.pth"),
}
_LARGE = {("blip_image_text_matching", "large"), ("blip_feature_extractor", "large"), ("blip_caption", "large")}


def test_every_model_type_yaml_names_its_arch_and_lavis_types_keep_lavis_defaults():
    from omegaconf import OmegaConf

    for name in MODELS:
        cls = registry.get_model_class(name)
        for model_type in cls.PRETRAINED_MODEL_CONFIG_DICT:
            cfg = OmegaConf.load(cls.default_config_path(model_type))
            # its own arch, or one it extends (BLIP-2's matching / feature classes share blip2's YAMLs)
            assert issubclass(cls, registry.get_model_class(cfg.model.arch)), (name, model_type)
            if (name, model_type) in LAVIS_TYPES:
                for key, value in LAVIS_TYPES[(name, model_type)].items():
                    assert cfg.model[key] == value, (name, model_type, key)
            if (name, model_type) in _LARGE:  # ViT-L/16
                assert cfg.model.vision_config.hidden_size == 1024 and cfg.model.vision_config.num_hidden_layers == 24
