"""LAVIS / original BLIP checkpoint keys -> transformers BLIP keys (caption, VQA, and the
encoder models: retrieval, ITM, feature extraction, pre-training, NLVR; see ``LAYOUTS``).

The renames are the ones transformers' BLIP conversion script documents: LAVIS's
timm-style ViT (``visual_encoder.blocks.N.attn.qkv``, ``norm1``, ``patch_embed``,
``pos_embed``, ``cls_token``) becomes ``vision_model.encoder.layers.N.self_attn.qkv``,
``layer_norm1``, ``embeddings.patch_embedding``, ``embeddings.position_embedding``,
``embeddings.class_embedding``; the BERT text decoder keeps its names
(``text_decoder.bert.*``, ``text_decoder.cls.*``).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- BLIP encoder models and NLVR
# LAVIS's ``blip_retrieval`` / ``blip_image_text_matching`` / ``blip_feature_extractor`` /
# ``blip_pretrain`` / ``blip_nlvr`` name their modules as below; vlft keeps transformers'
# ``BlipForImageTextRetrieval`` under ``blip.``, the momentum copies under ``momentum_model.``
# (LAVIS: ``*_m``), the decoder as ``text_decoder.`` and NLVR's parts at the top level. Inside
# a module only the ViT is renamed (``lavis_to_hf_key``): LAVIS's BERT (``med.py``) and
# transformers' ``BlipTextModel`` / ``BlipTextLMHeadModel`` use the same names, and so does
# NLVR's twin cross-attention (``self0`` / ``self1``, ``output.dense0`` / ``dense1`` /
# ``merge_layer``). Whole-tensor names (``temp``, the queues) carry over.
_LAVIS_MODULES: List[Tuple[str, str, bool]] = [  # (LAVIS prefix, vlft prefix, is a ViT)
    ("visual_encoder.", "blip.vision_model.", True),
    ("text_encoder.", "blip.text_encoder.", False),
    ("vision_proj.", "blip.vision_proj.", False),
    ("text_proj.", "blip.text_proj.", False),
    ("itm_head.", "blip.itm_head.", False),
    ("visual_encoder_m.", "momentum_model.vision_model.", True),
    ("text_encoder_m.", "momentum_model.text_encoder.", False),
    ("vision_proj_m.", "momentum_model.vision_proj.", False),
    ("text_proj_m.", "momentum_model.text_proj.", False),
    ("text_decoder.", "text_decoder.", False),
]
_NLVR_MODULES: List[Tuple[str, str, bool]] = [
    ("visual_encoder.", "vision_model.", True),
    ("text_encoder.", "text_encoder.", False),
    ("cls_head.", "cls_head.", False),
]
LAYOUTS = {"encoder": _LAVIS_MODULES, "nlvr": _NLVR_MODULES}
_WHOLE = ("temp", "image_queue", "text_queue", "idx_queue", "queue_ptr")
# every LAVIS BLIP module: a key under one of these that a model has no place for is dropped, not unexpected
_KNOWN = tuple(sorted({p for p, _, _ in _LAVIS_MODULES + _NLVR_MODULES} | {"text_decoder_m."}))
_TWIN = [(re.compile(r"^(.*\.crossattention\.)self\.(.*)$"), ("self0.", "self1.")),
         (re.compile(r"^(.*\.crossattention\.output\.)dense\.(.*)$"), ("dense0.", "dense1."))]


def _layout(layout: str) -> List[Tuple[str, str, bool]]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown LAVIS BLIP layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


def _unwrap_model(raw: Mapping) -> Mapping:
    return raw["model"] if isinstance(raw.get("model"), Mapping) else raw


def is_lavis_blip(raw: Mapping, model: nn.Module) -> bool:
    """Whether a state dict (or ``{"model": state}``) holds LAVIS BLIP names this model lacks."""
    state = _unwrap_model(raw)
    own = model.state_dict()
    return any(isinstance(k, str) and k.startswith(_KNOWN) and k not in own for k in state)


def lavis_blip_key(key: str, layout: str = "encoder") -> Optional[str]:
    """The vlft name of one LAVIS key (None: a module this layout has no place for, or no rule)."""
    if key in _WHOLE:
        return key
    for lavis, vlft, is_vit in _layout(layout):
        if key.startswith(lavis):
            rest = key[len(lavis):]
            if is_vit:
                rest = lavis_to_hf_key("visual_encoder." + rest)[len("vision_model."):]
            return vlft + rest
    return None


def to_lavis_blip(state: Mapping[str, torch.Tensor], layout: str = "encoder") -> Dict[str, torch.Tensor]:
    """vlft names -> LAVIS names (the inverse of ``lavis_blip_key``; tied tensors appear under
    each of their names, as in LAVIS's state dicts). Keys without a rule keep their names."""
    rules = sorted(_layout(layout), key=lambda r: -len(r[1]))  # the longest vlft prefix first
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for lavis, vlft, is_vit in rules:
            if key.startswith(vlft):
                rest = key[len(vlft):]
                if is_vit:
                    rest = hf_to_lavis_key("vision_model." + rest)[len("visual_encoder."):]
                new = lavis + rest
                break
        out[new] = value
    return out


def load_lavis_blip(model: nn.Module, source: Union[str, Mapping], layout: str = "encoder", name: Optional[str] = None):
    """Load a LAVIS / original BLIP checkpoint (a file, ``{"model": state}`` or a state dict)
    on top of ``model``'s weights; returns a ``LoadReport`` (also logged).

    ViT position embeddings (online and momentum) are resized to the model's image size;
    queues of another size are dropped (LAVIS drops every shape mismatch; here another shape
    of a weight is an error). Keys of LAVIS modules the model does not have (a decoder, momentum
    encoders, ITM head) are dropped; keys of unknown modules, or beyond the model's depth, are
    unexpected. In the ``nlvr`` layout a single cross-attention (a pre-training checkpoint)
    fills both twins. Tied tensors (``blip_pretrain``'s decoder) must get equal values."""
    from vlft.models.convert.lavis_blip2 import LoadReport
    from vlft.runners.checkpoint import read

    name = name or ("state dict" if isinstance(source, Mapping) else str(source))
    state = _unwrap_model(source if isinstance(source, Mapping) else read(source))
    own = model.state_dict()
    own_prefixes = {vlft for _, vlft, _ in _layout(layout) if any(k.startswith(vlft) for k in own)}
    present: Dict[str, torch.Tensor] = {}
    dropped, unexpected = [], []
    for key, value in state.items():
        if key.endswith(".position_ids"):  # a saved buffer in LAVIS's BERT, non-persistent in transformers
            dropped.append(key)
            continue
        new = lavis_blip_key(key, layout)
        targets = [new] if new is not None else []
        if layout == "nlvr" and new is not None and new not in own:
            for pattern, (a, b) in _TWIN:
                match = pattern.match(new)
                if match:
                    targets = [match.group(1) + a + match.group(2), match.group(1) + b + match.group(2)]
        if targets and all(t in own for t in targets):
            if key in _WHOLE and value.shape != own[key].shape:
                logger.info("%s: %s %s does not fit the model's %s (another queue size): dropped", name, key,
                            tuple(value.shape), tuple(own[key].shape))
                dropped.append(key)
                continue
            present.update({t: value for t in targets})
        elif key.startswith(_KNOWN) and not any(t.startswith(p) for t in targets for p in own_prefixes) \
                or (key in _WHOLE and key not in own):
            dropped.append(key)  # a part this model does not have (e.g. the decoder of a pre-training checkpoint)
        else:
            unexpected.append(key)

    for key in [k for k in present if k.endswith("vision_model.embeddings.position_embedding")]:
        if present[key].shape != own[key].shape and present[key].shape[-1] == own[key].shape[-1]:
            logger.info("%s: %s resized from %d to %d positions", name, key, present[key].shape[1], own[key].shape[1])
            present[key] = interpolate_pos_embed(present[key], own[key].shape[1] - 1)
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in present.items()
           if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: shapes differ from {type(model).__name__}'s: " + "; ".join(bad[:5]))

    identity = {n: id(t) for n, t in list(model.named_parameters(remove_duplicate=False))
                + list(model.named_buffers(remove_duplicate=False))}
    first: Dict[int, str] = {}
    for key, value in present.items():
        tid = identity.get(key)
        if tid in first and not torch.equal(present[first[tid]], value.to(present[first[tid]].dtype)):
            raise ValueError(f"{name}: {first[tid]} and {key} are one (tied) tensor in {type(model).__name__} but "
                             "the checkpoint gives them different values")
        if tid is not None:
            first.setdefault(tid, key)
    covered = set(first)
    missing = [k for k in own if k not in present and identity.get(k) not in covered]
    model.load_state_dict(present, strict=False)  # copies into the existing tensors: ties stay ties
    report = LoadReport(loaded=len(present), missing=missing, unexpected=unexpected, dropped=dropped)
    logger.info("LAVIS BLIP %s: %s", name, report.summary())
    if unexpected:
        logger.warning("%s: %d tensors have no place in %s: %s%s", name, len(unexpected), type(model).__name__,
                       unexpected[:5], " ..." if len(unexpected) > 5 else "")
    if missing:
        logger.warning("%s lacks %d of %s's tensors, which keep their current values: %s%s", name, len(missing),
                       type(model).__name__, missing[:5], " ..." if len(missing) > 5 else "")
    return report


# ---------------------------------------------------------------- pre-training starting points
_VIT_INIT_DROP = re.compile(r"^(head|head_dist|fc_norm|dist_token|pre_logits)(\.|$)")


def load_vit_init(vision_model: nn.Module, source: Union[str, Mapping]):
    """A timm-named ViT checkpoint (DeiT's ``deit_base_patch16_224-b5f2ef4d.pth``, LAVIS's
    starting point for BLIP pre-training) into a transformers ``BlipVisionModel``; the
    classifier head is dropped and the position embedding resized. Returns a ``LoadReport``."""
    from vlft.models.convert.lavis_blip2 import LoadReport
    from vlft.runners.checkpoint import read

    name = "state dict" if isinstance(source, Mapping) else str(source)
    state = _unwrap_model(source if isinstance(source, Mapping) else read(source))
    own = vision_model.state_dict()
    present, dropped, unexpected = {}, [], []
    for key, value in state.items():
        if _VIT_INIT_DROP.match(key):
            dropped.append(key)
            continue
        new = lavis_to_hf_key("visual_encoder." + key)[len("vision_model."):]
        if new in own:
            present[new] = value
        else:
            unexpected.append(key)
    pos = "embeddings.position_embedding"
    if pos in present and present[pos].shape != own[pos].shape:
        present[pos] = interpolate_pos_embed(present[pos], own[pos].shape[1] - 1)
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in present.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: ViT shapes differ from the model's: " + "; ".join(bad[:5]))
    vision_model.load_state_dict(present, strict=False)
    report = LoadReport(loaded=len(present), missing=[k for k in own if k not in present], unexpected=unexpected,
                        dropped=dropped)
    logger.info("ViT from %s: %s", name, report.summary())
    return report


_BERT_TEXT_DROP = re.compile(r"^(pooler\.|embeddings\.token_type_embeddings\.|cls\.seq_relationship\.|"
                             r"cls\.predictions\.decoder\.weight$|encoder\.layer\.\d+\.crossattention\.)|(^|\.)position_ids$")


def init_text_from_bert(model: nn.Module, source) -> "Any":
    """``blip_pretrain``'s text side from a BERT (a HF id / directory, file, module or state
    dict), as LAVIS builds it from ``bert-base-uncased``: BERT's embeddings, self-attention and
    FFNs fill the encoder and the decoder's own self-attention; its MLM head the decoder's
    ``cls``; the word embeddings copy their first rows (the [DEC] / [ENC] rows keep their
    initialisation); the cross-attention starts fresh. Returns a ``LoadReport``."""
    from vlft.models.convert.lavis_blip2 import LoadReport, _bert_state

    state, name = _bert_state(source)
    own = model.state_dict()
    writes: Dict[str, torch.Tensor] = {}
    dropped, unexpected = [], []
    for key, value in state.items():
        if _BERT_TEXT_DROP.search(key) or key == "cls.predictions.decoder.bias":  # the decoder bias is cls.predictions.bias
            dropped.append(key)
            continue
        targets = ["text_decoder." + key] if key.startswith("cls.") else ["blip.text_encoder." + key, "text_decoder.bert." + key]
        if not all(t in own for t in targets):
            unexpected.append(key)
            continue
        writes.update({t: value for t in targets})
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        for target, value in writes.items():
            tensor = params[target]
            if value.shape[1:] != tensor.shape[1:]:
                raise ValueError(f"{name}: {target} {tuple(value.shape)} does not fit {tuple(tensor.shape)}")
            n = min(value.shape[0], tensor.shape[0])
            tensor[:n].copy_(value[:n])
    report = LoadReport(loaded=len(writes), missing=[k for k in own if k.startswith(("blip.text_encoder.", "text_decoder."))
                                                     and k not in writes], unexpected=unexpected, dropped=dropped)
    logger.info("BLIP text encoder / decoder from BERT %s: %s", name, report.summary())
    return report
