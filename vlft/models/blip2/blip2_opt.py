"""``blip2_opt``: BLIP-2 with a frozen OPT decoder (LAVIS's ``blip2_opt``)."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from vlft.common.registry import registry
from vlft.models.blip2.blip2_lm import Blip2LM


@registry.register_model("blip2_opt")
class Blip2OPT(Blip2LM):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_opt2.7b": "configs/models/blip2/blip2_pretrain_opt2.7b.yaml",
        "pretrain_opt6.7b": "configs/models/blip2/blip2_pretrain_opt6.7b.yaml",
        "caption_coco_opt2.7b": "configs/models/blip2/blip2_caption_opt2.7b.yaml",
        "caption_coco_opt6.7b": "configs/models/blip2/blip2_caption_opt6.7b.yaml",
        "tiny": "configs/models/blip2/blip2_opt_tiny.yaml",
    }
    llm_key = "opt_model"

    @classmethod
    def load_language_model(cls, name: str, trust_remote_code: bool, cfg: Mapping[str, Any]) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code)
