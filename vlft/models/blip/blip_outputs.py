"""Output containers of the BLIP models (LAVIS's ``blip_outputs``): dicts whose fields also
read as attributes, with unset (None) fields left out of the keys, as transformers'
``ModelOutput`` and LAVIS's outputs behave."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput


@dataclass
class BlipOutputFeatures(ModelOutput):
    """``extract_features``: ``image_embeds`` [B, N, D] ViT tokens; ``image_embeds_proj``
    [B, N, embed_dim] their normalized projections; ``text_embeds`` [B, L, D] text-encoder
    tokens; ``text_embeds_proj`` [B, L, embed_dim]; ``multimodal_embeds`` [B, L, D] the [ENC]
    text cross-attending to the image."""

    image_embeds: Optional[torch.Tensor] = None
    image_embeds_proj: Optional[torch.Tensor] = None
    text_embeds: Optional[torch.Tensor] = None
    text_embeds_proj: Optional[torch.Tensor] = None
    multimodal_embeds: Optional[torch.Tensor] = None
