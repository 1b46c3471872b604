"""Beam search with vlft's cache (cross-attention keys and values not re-copied per
step) gives exactly what transformers' default cache gives."""
import importlib

import pytest
import torch

from vlft.models import load_model_and_preprocess
from vlft.models.generation_cache import BeamSharedCrossAttentionCache, beam_search_cache

CASES = [  # (model, module that passes the cache to generate, call)
    ("blip_caption", "vlft.models.blip.blip_caption",
     lambda m, s: m.generate(s, num_beams=4, max_length=12, min_length=2)),
    ("blip_vqa", "vlft.models.blip.blip_vqa",
     lambda m, s: m.predict_answers({**s, "text_input": ["what shape is it?", "which colour?", "is it left of the square?"]}, num_beams=3, max_len=8)),
    ("blip2_t5", "vlft.models.blip2.blip2_lm",
     lambda m, s: m.generate(s, num_beams=3, max_length=8, min_length=1)),
]


def _perturb(model: torch.nn.Module) -> None:
    """Random weights with spread, so that the beams differ (a fresh tiny model often
    repeats one token)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name,module,call", CASES, ids=[c[0] for c in CASES])
def test_beam_search_equals_the_default_cache(name, module, call, monkeypatch):
    torch.manual_seed(0)
    model, vis, _ = load_model_and_preprocess(name, "tiny", is_eval=True)
    _perturb(model)
    size = vis["eval"].transform.transforms[1].size if hasattr(vis["eval"], "transform") else None
    side = size[0] if isinstance(size, (list, tuple)) else 32
    samples = {"image": torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))}
    made = []
    init = BeamSharedCrossAttentionCache.__init__

    def counting_init(self, *a, **k):
        init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(BeamSharedCrossAttentionCache, "__init__", counting_init)
    with torch.no_grad():
        ours = call(model, samples)
        assert made and sum(c.shared_steps for c in made) > 0 and all(c.copied_steps == 0 for c in made)
        monkeypatch.setattr(importlib.import_module(module), "beam_search_cache", lambda *a, **k: {})
        default = call(model, samples)
    assert ours == default and len(set(ours)) > 1, (ours, default)


def test_a_reorder_across_samples_falls_back_to_copying():
    cache = BeamSharedCrossAttentionCache(num_beams=2)
    keys = torch.arange(4.0).repeat_interleave(2).reshape(4, 1, 2, 1)  # rows 0,1 / 2,3 differ: not shared
    cache.cross_attention_cache.update(keys.clone(), keys.clone(), 0)
    cache.self_attention_cache.update(keys.clone(), keys.clone(), 0)
    cache.reorder_cache(torch.tensor([1, 0, 3, 2]))
    assert cache.copied_steps == 1 and cache.shared_steps == 0


def test_caption_keys_are_projected_once_per_image_and_ids_equal_transformers_generate():
    torch.manual_seed(0)
    model, _, _ = load_model_and_preprocess("blip_caption", "tiny", is_eval=True)
    _perturb(model)
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rows = []
    key = model.blip.text_decoder.bert.encoder.layer[0].crossattention.self.key
    handle = key.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    decoding = dict(num_beams=4, max_length=12, min_length=2, num_return_sequences=2, do_sample=False)
    prompt = model.tokenizer([model.prompt] * 3, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = model.generate_ids(image, prompt, {**decoding, **beam_search_cache(4)})
        assert rows == [3]  # one projection of the 3 images, none per beam or per step
        rows.clear()
        reference = model.blip.generate(pixel_values=image, input_ids=prompt.clone(), **decoding)
        assert rows == [12]  # transformers: one per beam row
    handle.remove()
    assert torch.equal(ours, reference) and len({tuple(r) for r in ours.tolist()}) > 1
