"""Optimizer parameter groups.

- no weight decay for biases, norm weights and every other 1-d parameter, nor for the
  names a model lists in ``no_weight_decay()``;
- ``run.lr_multipliers``: ``{pattern: factor}``; a pattern matches a parameter when it
  matches its full name or any module path inside it (``visual_encoder`` matches
  ``visual_encoder.blocks.0.attn.qkv.weight`` and ``base_model.model.visual_encoder.x``;
  glob wildcards work). The first matching pattern, in YAML order, wins;
- ``model.lr_scale(name)``: the model's own factor (layer-wise decay), multiplied in.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn


def matches(name: str, pattern: str) -> bool:
    return any(fnmatchcase(name, p) for p in (pattern, f"{pattern}.*", f"*.{pattern}.*", f"*.{pattern}"))


def lr_multiplier(name: str, multipliers: Mapping[str, float]) -> float:
    for pattern, factor in multipliers.items():
        if matches(name, pattern):
            return float(factor)
    return 1.0


def build_param_groups(model: nn.Module, weight_decay: float, multipliers: Optional[Mapping[str, float]] = None,
                       include: Optional[set] = None) -> List[Dict[str, Any]]:
    """Parameter groups of the trainable parameters, plus the frozen ones named in
    ``include`` (scheduled to be unfrozen later: without a gradient AdamW skips them)."""
    include = include or set()
    multipliers = dict(multipliers or {})
    unused = [p for p in multipliers if not any(matches(n, p) for n, _ in model.named_parameters())]
    if unused:
        raise ValueError(f"run.lr_multipliers: pattern '{unused[0]}' matches no parameter of {type(model).__name__}")
    no_decay_names = set(getattr(model, "no_weight_decay", lambda: set())())
    model_scale = getattr(model, "lr_scale", lambda name: 1.0)
    groups: Dict[tuple, Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad and name not in include:
            continue
        decay = 0.0 if (param.ndim < 2 or name.endswith(".bias") or name in no_decay_names) else weight_decay
        scale = lr_multiplier(name, multipliers) * model_scale(name)
        group = groups.setdefault((decay, scale), {"params": [], "param_names": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (everything is frozen)")
    return list(groups.values())


def build_optimizer(model: nn.Module, run_cfg, include: Optional[set] = None) -> torch.optim.Optimizer:
    groups = build_param_groups(model, run_cfg.weight_decay, run_cfg.get("lr_multipliers"), include)
    # param_names is informational; torch keeps unknown group keys in state_dict harmlessly
    return torch.optim.AdamW(groups, lr=run_cfg.init_lr, betas=(0.9, run_cfg.beta2), weight_decay=run_cfg.weight_decay)
