"""``blip2_t5``: BLIP-2 with a frozen FlanT5 encoder-decoder (LAVIS's ``blip2_t5``)."""
from __future__ import annotations

from torch import nn

from vlft.common.registry import registry
from vlft.models.blip2.blip2_lm import Blip2LM


@registry.register_model("blip2_t5")
class Blip2T5(Blip2LM):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_flant5xl": "configs/models/blip2/blip2_pretrain_flant5xl.yaml",
        "pretrain_flant5xxl": "configs/models/blip2/blip2_pretrain_flant5xxl.yaml",
        "caption_coco_flant5xl": "configs/models/blip2/blip2_caption_flant5xl.yaml",
        "tiny": "configs/models/blip2/blip2_t5_tiny.yaml",
    }
    llm_key = "t5_model"

    @staticmethod
    def load_language_model(name: str, trust_remote_code: bool) -> nn.Module:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(name, trust_remote_code=trust_remote_code)
