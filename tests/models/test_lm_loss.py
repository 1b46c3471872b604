"""The causal-LM loss over labelled positions only (vlft.models.lm_loss) equals the
model's own ``forward(labels=...)`` for every architecture it is used on, with LoRA, and
in the two models that use it; other models and ``loss_logits: all`` take the full path."""
from __future__ import annotations

from tests.helpers import tiny_cfg  # (sets HF_HUB_OFFLINE before transformers is imported)

import pytest
import torch
from transformers import AutoModelForCausalLM, CONFIG_MAPPING

from vlft.common.config import Config
from vlft.common.validate_common import ConfigError
from vlft.models.lm_loss import LABELLED_LOSS_TYPES, causal_lm_loss

SHAPES = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
EXTRA = {"opt": dict(ffn_dim=64, word_embed_proj_dim=32, dropout=0.0),
         "qwen2": dict(intermediate_size=64, num_key_value_heads=2),
         "qwen3": dict(intermediate_size=64, num_key_value_heads=2, head_dim=8),
         "llama": dict(intermediate_size=64, num_key_value_heads=2),
         "mistral": dict(intermediate_size=64, num_key_value_heads=2),
         "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=101)}


def tiny_llm(model_type: str):
    torch.manual_seed(0)
    kwargs = EXTRA[model_type] if model_type == "gpt2" else {**SHAPES, **EXTRA[model_type]}
    return AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**kwargs)).eval()


def batch(hidden: int = 32):
    g = torch.Generator().manual_seed(1)
    embeds = torch.randn(3, 9, hidden, generator=g, requires_grad=True)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    labels = torch.randint(0, 101, (3, 9), generator=g)
    labels[:, :4] = -100  # queries and prompt
    labels[1, 6:] = -100
    labels[2, 7] = -100
    return embeds, mask, labels


def loss_and_grads(llm, loss_logits: str):
    embeds, mask, labels = batch()
    llm.zero_grad(set_to_none=True)
    loss = causal_lm_loss(llm, embeds, mask, labels, loss_logits)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in llm.named_parameters() if p.grad is not None}
    return loss.detach(), embeds.grad.clone(), grads


def assert_same(a, b):
    (loss_a, embeds_a, grads_a), (loss_b, embeds_b, grads_b) = a, b
    assert abs(loss_a.item() - loss_b.item()) <= 1e-6
    torch.testing.assert_close(embeds_a, embeds_b, rtol=1e-4, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("model_type", sorted(LABELLED_LOSS_TYPES))
def test_labelled_positions_only_equal_the_models_own_loss_and_gradients(model_type):
    llm = tiny_llm(model_type)
    embeds, mask, labels = batch()
    reference = llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    assert abs(causal_lm_loss(llm, embeds, mask, labels).item() - reference.item()) <= 1e-6
    assert_same(loss_and_grads(llm, "labelled"), loss_and_grads(llm, "all"))


def test_with_lora_the_adapter_gets_the_same_gradients():
    from peft import LoraConfig, get_peft_model

    llm = get_peft_model(tiny_llm("qwen2"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    labelled, full = loss_and_grads(llm, "labelled"), loss_and_grads(llm, "all")
    assert all("lora_" in name for name in labelled[2])
    assert_same(labelled, full)


def test_other_models_take_their_own_forward(monkeypatch):
    llm = tiny_llm("gpt2")
    called = []
    monkeypatch.setattr(type(llm), "forward", lambda self, **kw: called.append(kw) or type("O", (), {"loss": 0})())
    causal_lm_loss(llm, *batch())
    assert called and "labels" in called[0]


def test_no_labelled_token_gives_nan_as_the_full_path():
    llm = tiny_llm("qwen2")
    embeds, mask, labels = batch()
    labels[:] = -100
    assert torch.isnan(causal_lm_loss(llm, embeds, mask, labels))
    assert torch.isnan(causal_lm_loss(llm, embeds, mask, labels, "all"))


@pytest.mark.parametrize("arch", ["blip2_opt", "minigpt4qwen"])
def test_the_models_losses_are_the_same_either_way(arch):
    from vlft.common.registry import registry

    cls = registry.get_model_class(arch)
    samples = {"image": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
               "text_input": ["a red circle left of a square", "a green triangle"]}
    losses = []
    for loss_logits in ("labelled", "all"):
        torch.manual_seed(0)
        model = cls.from_config(tiny_cfg(cls, loss_logits=loss_logits)).eval()
        assert model.loss_logits == loss_logits
        losses.append(model(samples)["loss"].item())
    assert abs(losses[0] - losses[1]) <= 1e-6


def test_a_misspelt_value_is_a_config_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {arch: blip2_opt, model_type: tiny, loss_logits: labeled}\n"
                    "run: {task: captioning, output_dir: out}\ndatasets: {}\n")
    with pytest.raises(ConfigError, match="loss_logits must be one of labelled, all.*labelled"):
        Config.from_file(str(path))


def test_a_frozen_half_precision_llm_runs_in_its_own_dtype_under_autocast():
    from vlft.models.eva_vit import hold_own_precision

    llm = tiny_llm("opt").half()  # OPT's LayerNorm refuses fp16 weights on a bf16 input
    hold_own_precision(llm)
    embeds, mask, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labelled = causal_lm_loss(llm, embeds.half(), mask, labels)
        full = causal_lm_loss(llm, embeds.half(), mask, labels, "all")
    assert labelled.dtype == torch.float32 and abs(labelled.item() - full.item()) < 1e-3
