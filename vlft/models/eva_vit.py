"""The frozen image encoders of BLIP-2 (``eva_clip_g``, ``clip_L``, ``tiny``).

EVA ViT-g/14: Fang et al., "EVA: Exploring the Limits of Masked Visual Representation
Learning at Scale", CVPR 2023, as BLIP-2 (Li et al., ICML 2023) uses it: EVA-CLIP's
vision tower with its last block dropped (39 of 40 blocks, the second-to-last block's
features feed the Q-Former), width 1408, 16 heads, MLP 6144, patch 14, LayerNorm eps
1e-6, q and v biases (no k bias), exact GELU. Reference code: LAVIS's ``eva_vit.py``
and ``Blip2Base.init_vision_encoder``. MiniGPT4-Qwen reuses the same encoder.

The encoder is transformers' ``Blip2VisionModel`` rather than a ViT of our own or
timm's EVA: it is exactly the module ``Blip2ForConditionalGeneration`` and
``Blip2ForImageTextRetrieval`` contain, so a vlft BLIP-2 exports with
``save_pretrained`` unchanged and HF BLIP-2 checkpoints (``Salesforce/blip2-*``) load
with ``from_pretrained`` directly. timm's EVA names its weights differently, so it would
need a second key map and a copy into the HF layout at every export. LAVIS checkpoints
(``visual_encoder.*`` + ``ln_vision``) are renamed by
``vlft.models.convert.lavis_blip2``. HF's ``post_layernorm`` plays LAVIS's
``ln_vision``: the LayerNorm after the ViT that BLIP-2 trains while the ViT is frozen.

LayerNorm eps: LAVIS's EVA blocks use 1e-6 but its ``ln_vision`` is
``nn.LayerNorm(num_features)`` with torch's default 1e-5 (for every ``vit_model``),
while ``Blip2VisionModel`` gives ``post_layernorm`` the config's single
``layer_norm_eps``. :func:`vision_config` therefore adds ``post_layernorm_eps`` (1e-5)
to the config, and :func:`prepare_vision_encoder` sets ``post_layernorm.eps`` from it,
so a LAVIS checkpoint gives LAVIS's features. The field is saved in ``config.json`` by
``save_hf`` and honoured when vlft loads that directory; transformers itself ignores
it, so plain ``Blip2*.from_pretrained`` of a vlft export runs ``post_layernorm`` at
``layer_norm_eps`` (1e-6; 1.8e-4 on a tiny random model's features). HF's
``Salesforce/blip2-*`` configs have no such field: transformers' own LAVIS conversion
kept 1e-6, and vlft loads them as transformers defines them. Set ``vision_config:
{post_layernorm_eps: 1e-6}`` in the model section for the HF value.

``prepare_vision_encoder`` applies LAVIS's ``freeze_vit`` / ``vit_precision`` /
``use_grad_checkpoint`` options to a built encoder.
"""
from __future__ import annotations

import difflib
import functools
import logging
from typing import Any, Dict

import torch
from torch import nn

logger = logging.getLogger(__name__)

# name -> Blip2VisionConfig keyword arguments; ``image_size`` is the encoder's native size
VISION_ENCODERS: Dict[str, Dict[str, Any]] = {
    "eva_clip_g": dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                       patch_size=14, image_size=224, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True),
    # OpenAI CLIP ViT-L/14 as LAVIS's ``clip_L`` (24 blocks, the last dropped). Shape only:
    # CLIP also has ``ln_pre`` after the patch embedding, which Blip2VisionModel lacks, so
    # LAVIS's CLIP weights do not load into this module; it trains from its initialisation
    # or from HF-format weights.
    "clip_L": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   patch_size=14, image_size=224, layer_norm_eps=1e-5, hidden_act="quick_gelu", qkv_bias=True),
    # a 2-block ViT at 32 px for tests and CPU demos
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 patch_size=8, image_size=32, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True),
}

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: LAVIS's ``ln_vision`` (``Blip2Base.init_vision_encoder``): torch's default LayerNorm eps
LN_VISION_EPS = 1e-5


def vision_config(vit_model: str = "eva_clip_g", image_size: int | None = None, **overrides):
    """The ``Blip2VisionConfig`` of a named encoder at ``image_size`` (default: the
    encoder's native size, 224 for ``eva_clip_g``), with ``post_layernorm_eps`` (LAVIS's
    ``ln_vision`` eps, see the module docstring); ``overrides`` replace any field."""
    from transformers import Blip2VisionConfig

    if vit_model not in VISION_ENCODERS:
        known = sorted(VISION_ENCODERS)
        nearest = difflib.get_close_matches(vit_model, known, n=len(known), cutoff=0.0)
        raise KeyError(f"unknown vit_model {vit_model!r}; known vision encoders (nearest first): {nearest}")
    # transformers' Blip2VisionConfig initialises with std 1e-10 (it expects pretrained
    # weights), which leaves a ViT trained from scratch with ~zero features
    kwargs = dict(VISION_ENCODERS[vit_model], initializer_range=0.02, post_layernorm_eps=LN_VISION_EPS)
    if image_size is not None:
        kwargs["image_size"] = image_size
    kwargs.update(overrides)
    return Blip2VisionConfig(**kwargs)


class Fp32LayerNorm(nn.LayerNorm):
    """A LayerNorm that computes in its weights' dtype (fp32) whatever its input's dtype,
    so a half-precision frozen ViT feeds the Q-Former fp32 features (LAVIS's ``ln_vision``
    is such a LayerNorm). Same parameters and state-dict keys as ``nn.LayerNorm``."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype))


def _train_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen encoder: always eval (no dropout, as LAVIS's ``disabled_train``)."""
    return nn.Module.train(self, False)


def _forward_own_precision(module: nn.Module, *args, **kwargs):
    device = next(module.parameters()).device.type
    with torch.autocast(device_type=device, enabled=False):
        return type(module).forward(module, *args, **kwargs)


def hold_own_precision(module: nn.Module) -> None:
    """Run ``module`` (a frozen half-precision part: the ViT, the language model) in its
    own dtype, outside any autocast around it. Under ``run.amp: bf16`` an fp16 ViT would
    otherwise mix fp16 and bf16 tensors in one op, which autocast refuses. A partial of a
    module-level function, so that deepcopy and pickle carry it to the copy."""
    module.forward = functools.partial(_forward_own_precision, module)
    module._vlft_own_precision = True  # for code that calls its submodules directly (vlft.models.lm_loss)


def apply_post_layernorm_eps(vision_model: nn.Module) -> None:
    """Set ``post_layernorm.eps`` from the config's ``post_layernorm_eps`` when it has one
    (vlft-built configs: LAVIS's ``ln_vision``); otherwise transformers' value stays."""
    eps = getattr(vision_model.config, "post_layernorm_eps", None)
    if eps is not None:
        vision_model.post_layernorm.eps = float(eps)


def prepare_vision_encoder(vision_model: nn.Module, freeze_vit: bool = True, vit_precision: str = "fp16",
                           use_grad_checkpoint: bool = False) -> None:
    """Apply LAVIS's ViT options in place to a ``Blip2VisionModel``.

    ``post_layernorm`` takes its eps from the config (:func:`apply_post_layernorm_eps`).
    Frozen (``freeze_vit``): every parameter except ``post_layernorm`` (LAVIS's
    ``ln_vision``, trained in both stages) stops requiring grad, and the module stays in
    eval mode: its ``train`` is replaced on this instance, so ``model.train()`` of the
    enclosing model cannot switch it back (``_vlft_frozen`` marks it, for code that must
    know). The embeddings and blocks are then cast to ``vit_precision`` ("fp32", "fp16"
    or "bf16"); ``post_layernorm`` stays fp32 and casts its input up, so the output is
    fp32; the ViT then runs in its own dtype whatever autocast surrounds it. A trainable ViT stays fp32 (half-precision master weights would lose updates).
    ``use_grad_checkpoint`` turns on transformers' gradient checkpointing of the blocks
    (non-reentrant); it only acts in training mode, i.e. on a trainable ViT.
    """
    if vit_precision not in PRECISIONS:
        raise ValueError(f"vit_precision must be one of {sorted(PRECISIONS)}, got {vit_precision!r}")
    apply_post_layernorm_eps(vision_model)
    norm = vision_model.post_layernorm
    if type(norm) is nn.LayerNorm:
        norm.__class__ = Fp32LayerNorm  # same parameters and keys, only forward differs
    if freeze_vit:
        for name, param in vision_model.named_parameters():
            param.requires_grad = name.startswith("post_layernorm.")
        vision_model._vlft_frozen = True
        # an instance attribute shadows nn.Module.train, and Module.train reaches children
        # through their ``train`` attribute, so the parent's train() calls this one; a
        # partial of a module-level function (not a bound method) survives deepcopy and pickle
        vision_model.train = functools.partial(_train_frozen, vision_model)
        vision_model.eval()
        dtype = PRECISIONS[vit_precision]
        if dtype is not torch.float32:
            # pixel values follow: Blip2VisionEmbeddings casts them to the patch embedding's dtype
            vision_model.embeddings.to(dtype)
            vision_model.encoder.to(dtype)
            hold_own_precision(vision_model)
        norm.float()
        logger.info("vision encoder frozen (eval mode, %s); post_layernorm trainable in fp32", vit_precision)
    elif vit_precision != "fp32":
        logger.warning("vit_precision=%s ignored: a trainable ViT (freeze_vit=False) stays fp32, since half-precision "
                       "weights would round away small updates; use mixed precision (autocast) for speed", vit_precision)
    if use_grad_checkpoint:
        # transformers 5 renamed gradient_checkpointing_enable (deprecated until v6)
        if hasattr(vision_model, "activation_checkpointing_enable"):
            vision_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            vision_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
