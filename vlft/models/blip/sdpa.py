"""BLIP's attention on ``torch.nn.functional.scaled_dot_product_attention``.

transformers' BLIP (v1: ``BlipAttention`` in the ViT, ``BlipTextSelfAttention`` in the
BERT text towers) has only its eager attention: ``softmax(q k^T * scale + mask) v`` in
separate ops, with the full attention matrix materialised (577 x 577 per head at 384 px).
BLIP-2, Florence-2 and the chat LLMs already get SDPA from transformers. These
subclasses compute the same function with one SDPA call (flash / memory-efficient
kernels on GPU, a fused kernel on CPU); the weights, the cache protocol and the outputs
are unchanged, except that the attention probabilities are not returned
(``output_attentions`` gives None).

Same numbers: in fp32 the losses agree with eager within 1e-6 (tested); the kernels sum
in a different order, so the last bits differ. Attention dropout (0 in BLIP's configs)
draws a different mask than eager's ``nn.Dropout``: the same distribution, not the same
bits.

``model.attn_implementation``: ``sdpa`` swaps them in, ``eager`` (the default, the
reference's kernels) swaps them back; :func:`set_blip_attention`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import EncoderDecoderCache
from transformers.models.blip.modeling_blip import BlipAttention
from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

IMPLEMENTATIONS = ("eager", "sdpa")


def _dropout_p(module: nn.Module) -> float:
    return module.dropout.p if module.training else 0.0


class SdpaBlipAttention(BlipAttention):
    """The ViT's self-attention (no mask)."""

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        batch, length, width = hidden_states.shape
        q, k, v = (self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
                   .permute(2, 0, 3, 1, 4).unbind(0))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=_dropout_p(self), scale=self.scale)
        return self.projection(out.transpose(1, 2).reshape(batch, length, width)), None


class SdpaBlipTextSelfAttention(BlipTextSelfAttention):
    """The text towers' self- and cross-attention, with the additive mask BlipTextModel
    precomputes and the same key/value cache as the eager class."""

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], -1, self.attention_head_size).transpose(1, 2)

    def _keys_values(self, source: torch.Tensor, cross: bool, cache, kwargs):
        layer_cache, filled = cache, False
        if isinstance(cache, EncoderDecoderCache):
            layer_cache = cache.cross_attention_cache if cross else cache.self_attention_cache
            filled = cross and bool(cache.is_updated.get(self.layer_idx))
        if filled:  # the image's keys and values, computed at the first decoding step
            layer = layer_cache.layers[self.layer_idx]
            return layer.keys, layer.values
        keys, values = self._heads(self.key(source)), self._heads(self.value(source))
        if cache is not None:
            keys, values = layer_cache.update(keys, values, self.layer_idx, kwargs=kwargs)
            if cross and isinstance(cache, EncoderDecoderCache):
                cache.is_updated[self.layer_idx] = True
        return keys, values

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None, cache=None, **kwargs):
        cross = encoder_hidden_states is not None
        mask = encoder_attention_mask if cross else attention_mask
        query = self._heads(self.query(hidden_states))
        keys, values = self._keys_values(encoder_hidden_states if cross else hidden_states, cross, cache, kwargs)
        if mask is not None:
            mask = mask.to(device=query.device, dtype=query.dtype)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=_dropout_p(self))
        return out.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size), None


_SWAPS = {"sdpa": {BlipAttention: SdpaBlipAttention, BlipTextSelfAttention: SdpaBlipTextSelfAttention},
          "eager": {SdpaBlipAttention: BlipAttention, SdpaBlipTextSelfAttention: BlipTextSelfAttention}}


def set_blip_attention(model: nn.Module, implementation: str) -> int:
    """Give every BLIP attention module in ``model`` the ``implementation``'s class (the
    modules keep their weights); the number of modules changed."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}")
    swaps, changed = _SWAPS[implementation], 0
    for module in model.modules():
        new = swaps.get(type(module))
        if new is not None:
            module.__class__ = new
            changed += 1
    return changed
