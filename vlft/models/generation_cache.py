"""A decoder cache for beam search that does not copy the cross-attention keys and values.

Why: at every beam-search step transformers reorders the whole cache to follow the
surviving beams (``EncoderDecoderCache.reorder_cache`` -> ``index_select`` on every
layer's self- *and* cross-attention keys and values). The cross-attention part holds the
image (or question) tokens, so it is by far the larger part, and for a captioner it is
the same tensor for every beam of an image: re-copying it each step was 37% of batched
``generate`` time on a 5.4M-parameter BLIP (issue 12).

Why skipping that copy is exact: ``GenerationMixin.generate`` expands the encoder states
with ``repeat_interleave(num_beams)``, so rows ``i * num_beams ... (i + 1) * num_beams - 1``
of the cross-attention keys and values are computed from the same encoder row. Its
``_beam_search`` picks a sample's next beams among that sample's own beams only
(``_get_top_k_continuations``: a beam index below ``num_beams`` plus the sample's offset
``i * num_beams``), so ``beam_idx[r] // num_beams == r // num_beams`` for every row ``r``:
the reorder permutes rows within a group of equal rows, a no-op on the cross-attention part.
(transformers itself relies on the same fact: it never reorders ``encoder_hidden_states``
or ``encoder_attention_mask``.)

Both facts are checked rather than assumed. At the first reorder of a ``generate`` call
(when the cross-attention part has been filled) the keys of every layer are compared
across each group's rows; and every ``beam_idx`` is checked to stay within its groups,
at every step when it lives on the CPU (a few integer ops) and at the first step on an
accelerator (a check there is a host sync, which transformers 5's decoding loop avoids).
If a check fails, the cache falls back to reordering both parts for the rest of the call.

The same fact removes a larger cost: at the first step every beam's row projects the
encoder states to each layer's cross-attention keys and values, ``num_beams`` identical
projections of the image tokens (at BLIP-base shapes, 577 tokens x 12 layers: 16 GFLOP
per row, more than the whole decoding of a caption). :func:`prefill_cross_attention`
projects each sample's row once, repeats the result for its beams and stores it as
already computed, so the decoder reads it from the cache from the first step on.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from transformers import DynamicCache, EncoderDecoderCache


class BeamSharedCrossAttentionCache(EncoderDecoderCache):
    """An ``EncoderDecoderCache`` whose ``reorder_cache`` (the hook transformers' beam
    search calls after every step) reorders only the self-attention part while the
    cross-attention part is the same for all ``num_beams`` rows of a sample.

    ``shared_steps`` / ``copied_steps`` count the reorders that skipped / did the
    cross-attention copy (for tests and benchmarks).
    """

    def __init__(self, num_beams: int, self_attention_cache: Optional[DynamicCache] = None,
                 cross_attention_cache: Optional[DynamicCache] = None, config: Any = None):
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        kwargs = {"config": config} if config is not None else {}
        super().__init__(self_attention_cache if self_attention_cache is not None else DynamicCache(**kwargs),
                         cross_attention_cache if cross_attention_cache is not None else DynamicCache(**kwargs))
        self.num_beams = int(num_beams)
        self.shared_steps = 0
        self.copied_steps = 0
        self._cross_shared: Optional[bool] = None  # None: not yet checked for this call
        self._groups: Optional[torch.Tensor] = None

    def reset(self):
        super().reset()
        self._cross_shared = None
        self._groups = None

    # ------------------------------------------------------------------ checks
    def _within_groups(self, beam_idx: torch.Tensor) -> bool:
        """Does ``beam_idx`` send every row to a row of its own sample?"""
        if self._groups is None or self._groups.numel() != beam_idx.numel() or self._groups.device != beam_idx.device:
            self._groups = torch.arange(beam_idx.numel(), device=beam_idx.device) // self.num_beams
        return torch.equal(torch.div(beam_idx, self.num_beams, rounding_mode="floor").to(self._groups.dtype), self._groups)

    def _cross_is_shared(self) -> bool:
        """Are every layer's cross-attention keys equal across each sample's beams?"""
        layers = self.cross_attention_cache.layers
        if not layers or any(layer.keys is None or layer.keys.numel() == 0 for layer in layers):
            return False
        for layer in layers:
            keys = layer.keys
            if keys.shape[0] % self.num_beams:
                return False
            grouped = keys.reshape(keys.shape[0] // self.num_beams, self.num_beams, -1)
            # exact: the rows come from one repeated encoder row through the same projection
            if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
                return False
        return True

    # ------------------------------------------------------------------ the hook
    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Reorder for beam search: the self-attention part always; the cross-attention
        part only when the checks above fail."""
        self.self_attention_cache.reorder_cache(beam_idx)
        if self._cross_shared is None:  # first reorder of this call: check both facts
            self._cross_shared = self.num_beams > 1 and self._cross_is_shared() and self._within_groups(beam_idx)
        elif self._cross_shared and beam_idx.device.type == "cpu" and not self._within_groups(beam_idx):
            self._cross_shared = False  # cannot happen with transformers' beam search; stay exact if it does
        if self._cross_shared:
            self.shared_steps += 1
        else:
            self.cross_attention_cache.reorder_cache(beam_idx)
            self.copied_steps += 1


def beam_search_cache(num_beams: int, config: Any = None) -> Dict[str, Any]:
    """``generate`` keyword arguments for an encoder-decoder (or cross-attending) decoder:
    ``{"cache": BeamSharedCrossAttentionCache(num_beams)}`` for beam search (``num_beams``
    > 1), nothing otherwise (greedy and sampling never reorder)."""
    if num_beams <= 1:
        return {}
    return {"cache": BeamSharedCrossAttentionCache(num_beams, config=config)}


def prefill_cross_attention(cache: BeamSharedCrossAttentionCache, layers, encoder_states: torch.Tensor) -> None:
    """Store every cross-attending layer's keys and values of ``encoder_states`` (one row
    per sample, ``[batch, tokens, width]``) in ``cache``, each row repeated for the
    sample's ``cache.num_beams`` beams, and mark them computed. ``layers``: the decoder's
    BERT layers (BLIP's ``text_decoder.bert.encoder.layer``); their
    ``crossattention.self`` projects with its ``key`` / ``value`` and
    ``attention_head_size``, exactly as transformers' ``BlipTextSelfAttention`` does at
    its first step."""
    batch, tokens = encoder_states.shape[:2]
    for layer in layers:
        attn = getattr(getattr(layer, "crossattention", None), "self", None)
        if attn is None:
            continue
        shape = (batch, tokens, -1, attn.attention_head_size)
        keys = attn.key(encoder_states).view(shape).transpose(1, 2).repeat_interleave(cache.num_beams, 0)
        values = attn.value(encoder_states).view(shape).transpose(1, 2).repeat_interleave(cache.num_beams, 0)
        cache.cross_attention_cache.update(keys, values, attn.layer_idx)
        cache.is_updated[attn.layer_idx] = True
