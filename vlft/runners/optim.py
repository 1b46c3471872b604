"""Optimizer parameter groups.

- no weight decay for biases, norm weights and every other 1-d parameter, nor for the
  names a model lists in ``no_weight_decay()``;
- ``run.lr_multipliers``: ``{pattern: factor}``; a pattern matches a parameter when it
  matches its full name or any module path inside it (``visual_encoder`` matches
  ``visual_encoder.blocks.0.attn.qkv.weight`` and ``base_model.model.visual_encoder.x``;
  glob wildcards work). The first matching pattern, in YAML order, wins;
- ``run.lr_layer_decay``: layer-wise decay of a trained ViT, read from parameter names
  (transformers' vision towers: ``...vision_model.embeddings.*`` is layer 0,
  ``...vision_model.encoder.layers.N.*`` layer N+1, the rest of the tower (post-norm)
  layer n+1 for n blocks); the factor is ``decay ** (n + 1 - layer)``, as LAVIS's
  ``Blip2Base.get_optimizer_params`` / EVA's ``get_num_layer`` compute it. Parameters
  outside a vision tower keep 1. A frozen ViT has no parameters in the optimizer, so
  the key then changes nothing (as in LAVIS);
- ``model.lr_scale(name)``: the model's own factor.

The three factors multiply: ``lr = schedule(step) * multiplier * layer decay * lr_scale``
(each group's ``lr_scale``; the schedulers in lr_schedulers.py apply it every step).

LAVIS computes the same per-layer ``lr_scale`` but its schedulers then set every group
to the same lr, so in LAVIS ``lr_layer_decay`` has no effect on training. Faithful by
default, vlft does the same: a LAVIS YAML's ``lr_layer_decay: 0.95`` trains with LAVIS's
uniform rate (with a warning); ``run.apply_lr_layer_decay: true`` applies the decay.
"""
from __future__ import annotations

import logging
import re
from fnmatch import fnmatchcase
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

# a transformers vision tower (BLIP, BLIP-2, EVA in vlft's eva_vit) inside any wrapper
_VIT_PARAM = re.compile(r"^(?P<tower>(?:.*\.)?vision_model\.)(?:(?P<emb>embeddings\.)|encoder\.layers\.(?P<layer>\d+)\.)?")


def matches(name: str, pattern: str) -> bool:
    return any(fnmatchcase(name, p) for p in (pattern, f"{pattern}.*", f"*.{pattern}.*", f"*.{pattern}"))


def lr_multiplier(name: str, multipliers: Mapping[str, float]) -> float:
    for pattern, factor in multipliers.items():
        if matches(name, pattern):
            return float(factor)
    return 1.0


def vit_layer_ids(names: List[str]) -> Dict[str, tuple]:
    """``{parameter name: (layer id, layers + 1)}`` for the parameters of vision towers;
    each tower (prefix up to ``vision_model.``) counts its own blocks."""
    found = {n: m for n in names if (m := _VIT_PARAM.match(n))}
    depth: Dict[str, int] = {}
    for m in found.values():
        if m.group("layer") is not None:
            depth[m.group("tower")] = max(depth.get(m.group("tower"), 0), int(m.group("layer")) + 1)
    out = {}
    for name, m in found.items():
        n = depth.get(m.group("tower"), 0)
        layer = 0 if m.group("emb") else int(m.group("layer")) + 1 if m.group("layer") is not None else n + 1
        out[name] = (layer, n + 1)
    return out


def layer_decay_scales(model: nn.Module, decay: float) -> Callable[[str], float]:
    """The lr factor of each parameter under layer-wise decay ``decay`` (1.0 outside a ViT)."""
    decay = float(decay)
    if decay == 1.0:
        return lambda name: 1.0
    names = [n for n, _ in model.named_parameters()]
    ids = vit_layer_ids(names)
    if not any(layer not in (0, top) for layer, top in ids.values()):
        raise ValueError(f"run.lr_layer_decay={decay}: {type(model).__name__} has no ViT blocks named like "
                         "'vision_model.encoder.layers.N' (the names of transformers' vision towers); "
                         "use run.lr_multipliers for other models, or set lr_layer_decay: 1")
    if not any(p.requires_grad for n, p in model.named_parameters() if n in ids):
        logger.info("run.lr_layer_decay=%s: the ViT is frozen, so the decay changes nothing", decay)
    return lambda name: decay ** (ids[name][1] - ids[name][0]) if name in ids else 1.0


def build_param_groups(model: nn.Module, weight_decay: float, multipliers: Optional[Mapping[str, float]] = None,
                       include: Optional[set] = None, layer_decay: float = 1.0) -> List[Dict[str, Any]]:
    """Parameter groups of the trainable parameters, plus the frozen ones named in
    ``include`` (scheduled to be unfrozen later: without a gradient AdamW skips them)."""
    include = include or set()
    multipliers = dict(multipliers or {})
    unused = [p for p in multipliers if not any(matches(n, p) for n, _ in model.named_parameters())]
    if unused:
        raise ValueError(f"run.lr_multipliers: pattern '{unused[0]}' matches no parameter of {type(model).__name__}")
    no_decay_names = set(getattr(model, "no_weight_decay", lambda: set())())
    model_scale = getattr(model, "lr_scale", lambda name: 1.0)
    vit_scale = layer_decay_scales(model, layer_decay)
    groups: Dict[tuple, Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad and name not in include:
            continue
        decay = 0.0 if (param.ndim < 2 or name.endswith(".bias") or name in no_decay_names) else weight_decay
        scale = lr_multiplier(name, multipliers) * vit_scale(name) * model_scale(name)
        group = groups.setdefault((decay, scale), {"params": [], "param_names": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (everything is frozen)")
    return list(groups.values())


def build_optimizer(model: nn.Module, run_cfg, include: Optional[set] = None) -> torch.optim.Optimizer:
    layer_decay = float(run_cfg.get("lr_layer_decay", 1.0))
    if layer_decay != 1.0 and not run_cfg.get("apply_lr_layer_decay", False):
        logger.warning("run.lr_layer_decay=%s is not applied, as in LAVIS (its schedulers give every parameter "
                       "group the same lr); set run.apply_lr_layer_decay: true to apply it", layer_decay)
        layer_decay = 1.0
    groups = build_param_groups(model, run_cfg.weight_decay, run_cfg.get("lr_multipliers"), include,
                                layer_decay=layer_decay)
    impl = run_cfg.get("optimizer_impl", "auto")
    deepspeed = run_cfg.get("deepspeed_config") is not None or run_cfg.get("runner") in ("runner_deepspeed", "deepspeed_runner")
    # DeepSpeed's ZeRO partitions the optimizer's tensors itself: torch's default kernel there
    kwargs = {} if deepspeed and impl == "auto" else ADAMW_IMPLS[adamw_impl(impl, [p for g in groups for p in g["params"]])]
    # param_names is informational; torch keeps unknown group keys in state_dict harmlessly
    return torch.optim.AdamW(groups, lr=run_cfg.init_lr, betas=(0.9, run_cfg.beta2), weight_decay=run_cfg.weight_decay,
                             **kwargs)


# torch's three AdamW kernels: the same update, rounded differently (a run resumes exactly
# within one; switching between them changes the last bits of the weights)
ADAMW_IMPLS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single": {"foreach": False}}


def adamw_impl(setting: str, params: List[torch.Tensor]) -> str:
    """``run.optimizer_impl``: ``auto`` is the fused kernel (one kernel for all tensors,
    on CPU and CUDA in torch 2.4+; ~4x faster than single-tensor on the demo model)
    when every parameter is a floating-point tensor on a device it supports, else
    ``foreach``."""
    if setting not in ("auto", *ADAMW_IMPLS):
        raise ValueError(f"run.optimizer_impl must be auto, fused, foreach or single, not {setting!r}")
    if setting != "auto":
        return setting
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fused_ok = set(_get_fused_kernels_supported_devices())
    ok = all(p.is_floating_point() and p.device.type in fused_ok for p in params)
    return "fused" if ok else "foreach"
