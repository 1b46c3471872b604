"""LAVIS BLIP-2 and released MiniGPT4Qwen checkpoints <-> vlft's ``minigpt4qwen``.

The reference (Coobiw/MiniGPT4Qwen) is a LAVIS model: its ``.pth`` files are
``{"model": state, ...}`` with LAVIS's BLIP-2 names for the vision side
(``visual_encoder.*``, ``ln_vision.*``, ``Qformer.bert.*``, ``query_tokens``), its own
``llm_proj.*`` and the LLM under ``llm_model.*``; LoRA, applied to ``llm_model`` with
peft, adds ``llm_model.base_model.model.<...>.lora_A.default.weight`` and friends. The
released checkpoints hold only the trained weights (``llm_proj`` by default).

vlft's model uses transformers' module names for the vision side, placed so that the
LAVIS BLIP-2 key map (``vlft.models.convert.lavis_blip2``) applies with an empty prefix,
and the reference's own names for ``llm_proj`` and ``llm_model`` (``get_lora`` wraps
``llm_model`` with peft as the reference does), so those keys load unchanged. Keys with
no place in the model (the Q-Former's text embeddings and text FFN, BLIP-2's ITG head,
``t5_proj`` of the FlanT5 checkpoint MiniGPT4Qwen starts from) are reported as
unexpected; model keys the file lacks (the frozen ViT / LLM) keep their values and are
reported by module.
"""
from __future__ import annotations

import logging
import re
from typing import Dict, List, Mapping

import torch
from torch import nn

from vlft.models.convert.lavis_blip2 import LoadReport, _module_counts, is_lavis_blip2, load_lavis_blip2, to_lavis_blip2

logger = logging.getLogger(__name__)
_LORA = re.compile(r"^llm_model\.base_model\.model\.(.+)\.lora_[AB]\.[^.]+\.weight$")


def lora_targets(state: Mapping[str, torch.Tensor]) -> List[str]:
    """The module names the checkpoint's LoRA weights sit on (e.g. ``['c_attn']``)."""
    return sorted({m.group(1).rsplit(".", 1)[-1] for k in state if (m := _LORA.match(k))})


def is_reference_checkpoint(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether the state has LAVIS BLIP-2 names (``Qformer.*``, ``ln_vision``, ...) or the
    reference's LoRA names; a file of ``llm_proj`` / ``llm_model`` weights alone is the same
    in both formats and loads as a vlft checkpoint."""
    return is_lavis_blip2(state) or bool(lora_targets(state))


def load_reference_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor], name: str = "state") -> LoadReport:
    """Load a LAVIS BLIP-2 or MiniGPT4Qwen state dict on top of ``model`` (see the module docstring)."""
    targets = lora_targets(state)
    own = model.state_dict()
    if targets and not any(".lora_A." in k for k in own):
        raise ValueError(f"{name} holds LoRA weights on {targets}: build the model with get_lora: true and "
                         f"lora_target_modules: {targets} (and the checkpoint's lora_r) to load them")
    report = load_lavis_blip2(model, dict(state), prefix="")
    if report.missing:
        logger.info("%s: %d model tensors not in the file keep their values, by module: %s", name,
                    len(report.missing), _module_counts(report.missing))
    return report


def to_reference_checkpoint(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """vlft names -> the reference's (LAVIS's BLIP-2 names for the vision side; ``llm_proj``
    and ``llm_model`` unchanged), e.g. to hand a vlft-trained projection to the reference's code."""
    return to_lavis_blip2(state, prefix="", llm="opt")
