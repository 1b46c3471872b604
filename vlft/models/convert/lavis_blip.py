"""LAVIS / original BLIP checkpoint keys -> transformers BLIP keys.

The renames are the ones transformers' BLIP conversion script documents: LAVIS's
timm-style ViT (``visual_encoder.blocks.N.attn.qkv``, ``norm1``, ``patch_embed``,
``pos_embed``, ``cls_token``) becomes ``vision_model.encoder.layers.N.self_attn.qkv``,
``layer_norm1``, ``embeddings.patch_embedding``, ``embeddings.position_embedding``,
``embeddings.class_embedding``; the BERT text decoder keeps its names
(``text_decoder.bert.*``, ``text_decoder.cls.*``).
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch

# (pattern, replacement), applied in order to every key
_VISION_RULES: List[Tuple[str, str]] = [
    (r"^visual_encoder\.blocks\.", "vision_model.encoder.layers."),
    (r"^visual_encoder\.norm\.", "vision_model.post_layernorm."),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"\.attn\.proj\.", ".self_attn.projection."),
    (r"\.attn\.qkv\.", ".self_attn.qkv."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
]
# LAVIS keys with no counterpart in a captioning model (e.g. from a pretraining checkpoint)
_DROP = re.compile(r"^(text_encoder|vision_proj|text_proj|itm_head|temp|image_queue|text_queue|idx_queue|ptr_queue|"
                   r"visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m|text_decoder_m)"
                   # BERT's position_ids: a saved buffer in LAVIS / BLIP, a non-persistent one in transformers
                   r"|.*\.position_ids$")


def lavis_to_hf_key(key: str) -> str:
    for pattern, replacement in _VISION_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_lavis_blip_caption(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a LAVIS ``blip_caption`` state dict (``{"model": ...}`` unwrapped by the caller)
    to transformers' ``BlipForConditionalGeneration`` names; returns (state, dropped keys)."""
    out, dropped = {}, []
    for key, value in state.items():
        if _DROP.match(key):
            dropped.append(key)
            continue
        out[lavis_to_hf_key(key)] = value
    return out, dropped


def hf_to_lavis_key(key: str) -> str:
    """The inverse map (for writing LAVIS-named checkpoints, e.g. in tests)."""
    inverse = [
        (r"^vision_model\.encoder\.layers\.", "visual_encoder.blocks."),
        (r"^vision_model\.post_layernorm\.", "visual_encoder.norm."),
        (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
        (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
        (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
        (r"\.self_attn\.projection\.", ".attn.proj."),
        (r"\.self_attn\.qkv\.", ".attn.qkv."),
        (r"\.layer_norm1\.", ".norm1."),
        (r"\.layer_norm2\.", ".norm2."),
    ]
    for pattern, replacement in inverse:
        key = re.sub(pattern, replacement, key)
    return key


def interpolate_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Resize a ViT position embedding (1, 1 + g*g, d) to ``num_patches`` patches, bicubically
    on the 2-d grid, keeping the [CLS] position (LAVIS does this when the image size changes)."""
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old, new = int(round(grid.shape[1] ** 0.5)), int(round(num_patches ** 0.5))
    if old == new:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=1)


# ---------------------------------------------------------------- BLIP VQA
# LAVIS ``blip_vqa`` adds a question encoder under ``text_encoder.``: a BERT with cross-attention
# to the image whose names (``embeddings.*``, ``encoder.layer.N.{attention,crossattention,
# intermediate,output}.*``) transformers' ``BlipForQuestionAnswering.text_encoder`` (a
# ``BlipTextModel``) uses unchanged, so only the ViT is renamed; ``text_decoder.*`` also keeps
# its names. What a VQA model has no place for (ITC / ITM heads, momentum copies, queues) is dropped.
_DROP_VQA = re.compile(r"^(vision_proj|text_proj|itm_head|temp|image_queue|text_queue|idx_queue|ptr_queue|"
                       r"visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m|text_decoder_m)(\.|$)"
                       r"|.*\.position_ids$")


def convert_lavis_blip_vqa(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a LAVIS ``blip_vqa`` state dict (``{"model": ...}`` unwrapped by the caller) to
    transformers' ``BlipForQuestionAnswering`` names; returns (state, dropped keys)."""
    out, dropped = {}, []
    for key, value in state.items():
        if _DROP_VQA.match(key):
            dropped.append(key)
            continue
        out[lavis_to_hf_key(key)] = value
    return out, dropped
