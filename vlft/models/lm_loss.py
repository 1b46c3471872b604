"""Causal-LM training loss with the vocabulary projection at the labelled positions only.

A transformers causal LM's own ``forward(labels=...)`` projects every position onto the
vocabulary, upcasts the ``[batch, length, vocab]`` logits to fp32 and then ignores every
position whose next-token label is -100: BLIP-2's query tokens and prompt, a chat's
system text and human turns, the padding. With a large vocabulary that is most of the
memory of a step: Qwen's 151,936 tokens at batch 8 x 512 positions are 2.5 GB of fp32
logits (plus their bf16 original and their gradient), and ``lm_head`` is 8% of
Qwen-7B's arithmetic.

:func:`causal_lm_loss` runs the model's body (``base_model``), keeps the hidden states
whose next token is labelled and applies ``lm_head`` to those alone, then the same mean
cross-entropy in fp32 as transformers' ``ForCausalLMLoss`` (sum over labelled tokens /
their count). The loss and gradients equal the full path's within fp32 rounding
(``tests/models/test_lm_loss.py`` pins 1e-6 for each architecture below).

The split is exact only where the logits are ``lm_head(base_model(...)[0])`` with
nothing after it (no logit scaling or soft-capping, no extra heads), so it is used for
the model types in :data:`LABELLED_LOSS_TYPES`; any other model, and the option
``model.loss_logits: all``, get the model's own ``forward(labels=...)``.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

#: ``config.model_type`` values whose logits are ``lm_head`` of the body's last hidden state
LABELLED_LOSS_TYPES = frozenset({"opt", "qwen2", "qwen3", "llama", "mistral"})
#: ``model.loss_logits``: ``labelled`` (the default) or ``all`` (every position, as transformers)
LOSS_LOGITS = ("labelled", "all")


def check_loss_logits(value: Optional[str]) -> str:
    value = "labelled" if value is None else str(value)
    if value not in LOSS_LOGITS:
        raise ValueError(f"model.loss_logits must be one of {list(LOSS_LOGITS)}, got {value!r}")
    return value


def causal_lm_loss(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   loss_logits: str = "labelled") -> torch.Tensor:
    """The mean next-token cross-entropy of ``llm`` over the positions where ``labels``
    (aligned with the inputs, -100 where not a target) is set."""
    from vlft.models.adapters import base_model  # (at module level the import would be circular)

    model = base_model(llm)  # under a peft wrapper: the transformers model, its LoRA layers in place
    if loss_logits == "all" or getattr(model.config, "model_type", None) not in LABELLED_LOSS_TYPES:
        return llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels).loss
    # a frozen half-precision LLM runs outside autocast (vlft.models.eva_vit.hold_own_precision
    # wraps its forward, which this path does not call): so do its body and head here
    own = getattr(model, "_vlft_own_precision", False) or getattr(llm, "_vlft_own_precision", False)
    with torch.autocast(device_type=inputs_embeds.device.type, enabled=False) if own else contextlib.nullcontext():
        hidden = model.base_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)[0]
        targets = labels[:, 1:]
        keep = targets != -100
        logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])
