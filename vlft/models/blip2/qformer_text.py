"""The text side of BLIP-2's Q-Former as a decoder over the queries' cached keys and
values: the ITG loss of stage 1 and ``Blip2Qformer.generate``.

Reference: LAVIS's ``Blip2Qformer`` (``blip2_qformer.py``). LAVIS runs the queries once
(the ITC pass, ``use_cache=True``) and then decodes the caption with those self-attention
keys and values as ``past_key_values``: each text token attends to every query and to
the earlier text, the queries never see the text, and the text never cross-attends to
the image. transformers 5's ``Blip2QFormerModel`` has no cache, so this module provides
one without forking the Q-Former:

- :func:`record_query_kv` records, during a queries-only pass through transformers'
  ``Blip2QFormerModel``, every layer's self-attention keys and values (forward hooks on
  the ``key`` / ``value`` projections; gradients flow through the recorded tensors).
- :func:`text_hidden_states` runs text tokens through the same layers with those keys
  and values prepended in self-attention. It calls each layer's own modules (the
  projections, the attention output dense + LayerNorm, the text FFN) and transformers'
  attention function for the model's ``_attn_implementation``; only the loop over
  layers is written here, because the HF layer cannot take a key/value prefix.
- :class:`QFormerCaptioner` puts those two behind transformers' ``GenerationMixin``, so
  beam search, nucleus sampling, min/max length and repetition penalty are transformers'
  own, as LAVIS uses ``BertLMHeadModel.generate``. Every step re-runs the text so far
  over the fixed query keys/values (``use_cache=False``: captions are short, and the
  generation cache API of transformers 5 is still moving).

Shapes: ``query_kv`` is a list with one ``(key, value)`` pair per Q-Former layer, each
``[batch, heads, num_query, head_size]``; packed for ``generate`` (which expands model
inputs along dim 0 for beams) as one tensor ``[batch, layers, 2, heads, num_query, head_size]``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

import torch
from torch import nn

QueryKV = List[Tuple[torch.Tensor, torch.Tensor]]


def _heads(x: torch.Tensor, head_size: int) -> torch.Tensor:
    """[B, L, H*d] -> [B, H, L, d], as transformers' Q-Former attention splits heads."""
    return x.view(*x.shape[:2], -1, head_size).transpose(1, 2)


@contextlib.contextmanager
def record_query_kv(qformer: nn.Module) -> Iterator[QueryKV]:
    """Record the self-attention ``(key, value)`` of every layer during one queries-only
    ``qformer(...)`` call inside the block; the yielded list holds them once the block
    has ended (a call with text would record the text's keys and values too)."""
    layers = qformer.encoder.layer
    keys: List[Optional[torch.Tensor]] = [None] * len(layers)
    values: List[Optional[torch.Tensor]] = [None] * len(layers)
    out: QueryKV = []

    def hook(store, index, head_size):
        def record(module, inputs, output):
            store[index] = _heads(output, head_size)
        return record

    handles = []
    for i, layer in enumerate(layers):
        attn = layer.attention.attention
        handles.append(attn.key.register_forward_hook(hook(keys, i, attn.attention_head_size)))
        handles.append(attn.value.register_forward_hook(hook(values, i, attn.attention_head_size)))
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()
    if any(k is None for k in keys):
        raise RuntimeError("record_query_kv: no Q-Former pass ran inside the block")
    out.extend(zip(keys, values))


def prefix_causal_mask(text_mask: torch.Tensor, num_query: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, T, Q+T] mask for text rows over ``[queries; text]`` keys: every
    query, and the earlier (and own) text tokens that are not padding."""
    b, t = text_mask.shape
    causal = torch.ones(t, t, dtype=torch.bool, device=text_mask.device).tril()
    allowed = torch.cat([torch.ones(b, t, num_query, dtype=torch.bool, device=text_mask.device),
                         causal[None] & text_mask[:, None, :].bool()], dim=2)
    return torch.zeros(b, 1, t, num_query + t, dtype=dtype, device=text_mask.device).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)


def _self_attention(attn: nn.Module, hidden: torch.Tensor, key_prefix: torch.Tensor, value_prefix: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """One ``Blip2QFormerMultiHeadAttention`` over ``hidden`` with a key/value prefix."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.blip_2.modeling_blip_2 import eager_attention_forward

    size = attn.attention_head_size
    query = _heads(attn.query(hidden), size)
    key = torch.cat([key_prefix.to(query.dtype), _heads(attn.key(hidden), size)], dim=2)
    value = torch.cat([value_prefix.to(query.dtype), _heads(attn.value(hidden), size)], dim=2)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = attention(attn, query, key, value, mask, dropout=attn.attention_dropout if attn.training else 0.0,
                       scaling=attn.scaling)
    return out.reshape(*out.shape[:2], -1)


def text_hidden_states(blip2: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       query_kv: QueryKV) -> torch.Tensor:
    """[B, T, hidden]: the text tokens (positions from 0) through the Q-Former of a
    transformers ``Blip2ForImageTextRetrieval`` (``blip2``), each attending to every
    query (``query_kv``) and causally to the unpadded text."""
    from transformers.pytorch_utils import apply_chunking_to_forward

    qformer = blip2.qformer
    embeds = blip2.embeddings(input_ids=input_ids)
    hidden = qformer.dropout(qformer.layernorm(embeds.to(qformer.layernorm.weight.dtype)))
    mask = prefix_causal_mask(attention_mask, query_kv[0][0].shape[2], hidden.dtype)
    for layer, (key, value) in zip(qformer.encoder.layer, query_kv):
        context = _self_attention(layer.attention.attention, hidden, key, value, mask)
        attended = layer.attention.output(context, hidden)
        hidden = apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim,
                                           attended)
    return hidden


def pack_query_kv(query_kv: QueryKV) -> torch.Tensor:
    """One tensor [B, layers, 2, heads, Q, d] (``generate`` expands model inputs on dim 0)."""
    return torch.stack([torch.stack(pair, dim=1) for pair in query_kv], dim=1)


def unpack_query_kv(packed: torch.Tensor) -> QueryKV:
    return [(packed[:, i, 0], packed[:, i, 1]) for i in range(packed.shape[1])]


def make_captioner(blip2: nn.Module, lm_head: nn.Module, tokenizer):
    """A :class:`QFormerCaptioner` over ``blip2``'s Q-Former and ``lm_head`` (not copied)."""
    return _captioner_class()(blip2, lm_head, tokenizer)


def _captioner_class():
    # built on first use: importing transformers' model classes at module import would
    # slow every ``import vlft`` for a path only generation takes
    global _CAPTIONER
    if _CAPTIONER is None:
        from transformers import Blip2QFormerModel, GenerationMixin, PreTrainedModel
        from transformers.modeling_outputs import CausalLMOutput

        class QFormerCaptioner(PreTrainedModel, GenerationMixin):
            """The Q-Former's text side with the ITG head as a transformers generative
            model: ``generate(input_ids=[[bos]]*B, query_kv=pack_query_kv(...))``."""

            main_input_name = "input_ids"
            # the Q-Former's own attention modules run, under its config's implementation:
            # accept the implementations transformers accepts for it
            _supports_sdpa = Blip2QFormerModel._supports_sdpa
            _supports_flex_attn = Blip2QFormerModel._supports_flex_attn
            _supports_attention_backend = Blip2QFormerModel._supports_attention_backend

            def __init__(self, blip2: nn.Module, lm_head: nn.Module, tokenizer):
                import copy

                config = copy.deepcopy(blip2.config.qformer_config)
                config.is_decoder = True
                config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.sep_token_id
                config.pad_token_id = tokenizer.pad_token_id
                super().__init__(config)
                self.blip2, self.lm_head = blip2, lm_head

            def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                        query_kv: Optional[torch.Tensor] = None, **unused) -> "CausalLMOutput":
                mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
                hidden = text_hidden_states(self.blip2, input_ids, mask, unpack_query_kv(query_kv))
                return CausalLMOutput(logits=self.lm_head(hidden[:, -1:]).float())

            def prepare_inputs_for_generation(self, input_ids, attention_mask=None, query_kv=None, **unused):
                return {"input_ids": input_ids, "attention_mask": attention_mask, "query_kv": query_kv}

        _CAPTIONER = QFormerCaptioner
    return _CAPTIONER


_CAPTIONER = None
