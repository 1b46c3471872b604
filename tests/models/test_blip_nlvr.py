"""BLIP NLVR2 (``blip_nlvr``) on the tiny type: the twin cross-attention (one per image,
averaged or merged), the loss and ``predict``, and LAVIS checkpoints (an NLVR one name for
name, a pre-training one filling both twins)."""
from __future__ import annotations

from tests.helpers import sharpen, tiny_model  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import vlft.models  # noqa: F401  (registers the models)
from vlft.models.blip.blip_nlvr import BlipNLVR, TwinCrossAttention
from vlft.models.blip.blip_pretrain import BlipPretrain
from vlft.models.convert.lavis_blip import load_lavis_blip, to_lavis_blip
from vlft.runners.checkpoint import atomic_save

SENTENCES = ["the left image has a red circle", "both images show squares", "there is a green triangle"]


def tiny(seed: int = 0, **overrides) -> BlipNLVR:
    return tiny_model(BlipNLVR, seed, **overrides)


def pair_batch(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image0": torch.randn(n, 3, 32, 32, generator=g), "image1": torch.randn(n, 3, 32, 32, generator=g),
            "text_input": SENTENCES[:n], "label": torch.tensor([1, 0, 1][:n]), "instance_id": [str(i) for i in range(n)]}


def test_every_layer_cross_attends_to_both_images_and_later_layers_merge():
    model = tiny()
    layers = model.text_encoder.encoder.layer
    assert all(isinstance(layer.crossattention, TwinCrossAttention) for layer in layers)
    assert layers[0].crossattention.output.merge_layer is None  # tiny: layer 1 of 2 merges (LAVIS: 6.. of 12)
    assert layers[1].crossattention.output.merge_layer.weight.shape == (32, 64)
    assert tiny(twin_merge_from_layer=6).text_encoder.encoder.layer[1].crossattention.output.merge_layer is None
    s = pair_batch()
    swapped = {**s, "image0": s["image1"], "image1": s["image0"]}
    model = sharpen(model)
    assert not torch.allclose(model.logits(s), model.logits(swapped))  # which image is which matters
    with pytest.raises(ValueError, match="two images"):
        model.text_encoder(input_ids=torch.tensor([[2, 6, 3]]), encoder_hidden_states=torch.randn(1, 17, 32))


def test_identical_twins_on_one_image_reduce_to_a_plain_cross_attention():
    """With self1 = self0, dense1 = dense0, no merge layer and image1 = image0, the average of the
    two contexts is one BERT cross-attention: the twin adds nothing but the second image."""
    from transformers.models.blip.modeling_blip_text import BlipTextAttention

    model = sharpen(tiny(twin_merge_from_layer=6))
    twin = model.text_encoder.encoder.layer[0].crossattention
    twin.self1.load_state_dict(twin.self0.state_dict())
    plain = BlipTextAttention(model.text_encoder.config, is_cross_attention=True, layer_idx=0).eval()
    plain.self.load_state_dict(twin.self0.state_dict())
    with torch.no_grad():
        twin.output.dense1.load_state_dict(twin.output.dense0.state_dict())
        plain.output.dense.load_state_dict(twin.output.dense0.state_dict())
        plain.output.LayerNorm.load_state_dict(twin.output.LayerNorm.state_dict())
        hidden, image = torch.randn(2, 5, 32), torch.randn(2, 17, 32)
        ours, _ = twin(hidden, encoder_hidden_states=(image, image))
        theirs, _ = plain(hidden, encoder_hidden_states=image)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_loss_and_predict():
    model = sharpen(tiny())
    s = pair_batch()
    logits = model.logits(s)
    assert logits.shape == (3, 2)
    torch.testing.assert_close(model(s)["loss"], F.cross_entropy(logits, s["label"]))
    pred = model.predict(s)
    assert pred["predictions"].dtype == torch.long and torch.equal(pred["predictions"], logits.argmax(1))
    assert torch.equal(pred["targets"], s["label"]) and torch.equal(pred["logits"], logits)
    seen = {}
    hook = model.text_encoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    model.predict({**s, "label": [1, 0, 1]})  # labels as a list (a collated batch of ints) work too
    hook.remove()
    assert (seen["input_ids"][:, 0] == model.enc_token_id).all()  # [ENC] first, as LAVIS
    model.train()
    model(s)["loss"].backward()
    layer = model.text_encoder.encoder.layer[1].crossattention
    for p in (layer.self0.key.weight, layer.self1.key.weight, layer.output.merge_layer.weight, model.cls_head[2].weight,
              model.vision_model.encoder.layers[0].self_attn.qkv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        model.logits({**s, "image1": s["image1"][:2]})


def test_an_nlvr_checkpoint_round_trips_through_lavis_names(tmp_path):
    source = sharpen(tiny())
    lavis = to_lavis_blip(source.state_dict(), layout="nlvr")
    for name in ("visual_encoder.blocks.0.attn.qkv.weight", "visual_encoder.cls_token",
                 "text_encoder.encoder.layer.0.crossattention.self0.query.weight",
                 "text_encoder.encoder.layer.0.crossattention.self1.value.bias",
                 "text_encoder.encoder.layer.0.crossattention.output.dense0.weight",
                 "text_encoder.encoder.layer.1.crossattention.output.merge_layer.weight",
                 "cls_head.0.weight", "cls_head.2.bias"):
        assert name in lavis, name
    path = atomic_save({"model": lavis}, tmp_path / "model_base_nlvr.pth")
    fresh = tiny(seed=5, load_finetuned=True, finetuned=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    s = pair_batch()
    assert torch.equal(source.logits(s), fresh.logits(s))
    report = load_lavis_blip(tiny(seed=6), str(path), layout="nlvr")
    assert report.missing == [] and report.unexpected == [] and report.dropped == []


def test_a_pretraining_checkpoint_starts_both_twins_from_its_one_cross_attention():
    pretrained = sharpen(BlipPretrain.from_config(OmegaConf.load(BlipPretrain.default_config_path("tiny")).model))
    lavis = to_lavis_blip(pretrained.state_dict())
    model = tiny(seed=3)
    report = load_lavis_blip(model, {"model": lavis}, layout="nlvr")
    assert report.unexpected == []
    assert sorted(report.missing) == ["cls_head.0.bias", "cls_head.0.weight", "cls_head.2.bias", "cls_head.2.weight",
                                      "text_encoder.encoder.layer.1.crossattention.output.merge_layer.bias",
                                      "text_encoder.encoder.layer.1.crossattention.output.merge_layer.weight"]
    assert any(k.startswith("text_decoder.") for k in report.dropped) and "image_queue" in report.dropped
    src = pretrained.blip.text_encoder.encoder.layer[1].crossattention
    twin = model.text_encoder.encoder.layer[1].crossattention
    for part in ("query", "key", "value"):
        assert torch.equal(getattr(twin.self0, part).weight, getattr(src.self, part).weight)
        assert torch.equal(getattr(twin.self1, part).weight, getattr(src.self, part).weight)
    assert torch.equal(twin.output.dense0.weight, src.output.dense.weight)
    assert torch.equal(twin.output.dense1.bias, src.output.dense.bias)
    assert torch.equal(twin.output.LayerNorm.weight, src.output.LayerNorm.weight)
    assert torch.equal(model.vision_model.encoder.layers[0].self_attn.qkv.weight,
                       pretrained.blip.vision_model.encoder.layers[0].self_attn.qkv.weight)
