"""What every registered model provides.

Contract (docs/adding_a_model.md walks through it; docs/wrapping_a_transformers_vlm.md
for a transformers model and its processor): ``forward(samples) -> {"loss": ..., ...}``; generation is
``generate(samples, **decoding) -> list[str]``; ``from_config`` only translates the
``model:`` section into ``__init__`` keyword arguments (defaults live in __init__).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from vlft.common.utils import resolve_config_file

logger = logging.getLogger(__name__)


class BaseModel(nn.Module):
    #: model_type -> default YAML (``configs/...`` paths point into the shipped configs)
    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {}
    #: the attribute holding the transformers model that ``save_hf`` writes (None: vlft-native)
    hf_attr: Optional[str] = None

    @classmethod
    def default_config_path(cls, model_type: str):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise KeyError(
                f"{cls.__name__} has no model_type '{model_type}'; available: {', '.join(cls.PRETRAINED_MODEL_CONFIG_DICT)}"
            )
        return resolve_config_file(cls.PRETRAINED_MODEL_CONFIG_DICT[model_type])

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BaseModel":
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def lr_scale(self, param_name: str) -> float:
        """Learning-rate factor for one parameter; override for layer-wise decay
        (e.g. ViT block i of n gets ``decay ** (n - i)``)."""
        return 1.0

    def no_weight_decay(self) -> set:
        """Names of extra parameters to exempt from weight decay (e.g. positional embeddings)."""
        return set()

    def load_checkpoint(self, path: str):
        """Load a checkpoint's (possibly trainable-only) weights on top of this model's
        current ones; returns ``(missing, unexpected)`` keys."""
        from vlft.runners.checkpoint import load_model_weights

        return load_model_weights(self, path)

    def peft_parts(self) -> List[Any]:
        """The transformers models inside this model whose LoRA ``export`` writes in peft's
        own terms (``vlft.models.peft_export.PeftPart``): by default the one ``hf_attr``
        names, onto the ``hf_base/`` that ``save_hf`` writes. None: the adapter keeps vlft's names."""
        from vlft.models.peft_export import PeftPart

        if not self.hf_attr:
            return []
        hf = getattr(self, self.hf_attr)
        return [PeftPart("adapter", self.hf_attr, type(hf), source=str(getattr(hf, "name_or_path", "") or ""))]
