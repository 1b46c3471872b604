"""``blip2_t5``: BLIP-2 with a frozen FlanT5 encoder-decoder (LAVIS's ``blip2_t5``).

LAVIS builds the T5 with ``dense_act_fn = "gelu"`` (exact GELU) whatever its config says;
FlanT5's config (``feed_forward_proj: gated-gelu``) means the tanh approximation
``gelu_new`` to transformers. vlft follows LAVIS by default (``model.dense_act_fn``,
``null`` keeps the language model's own) for models built from ``t5_model`` or
``text_config``; a HF ``Blip2ForConditionalGeneration`` (``pretrained: Salesforce/...``)
loads as transformers defines it. transformers re-derives the activation from
``feed_forward_proj`` when it reads a ``config.json``, so a ``save_hf`` export loaded by
plain transformers runs ``gelu_new`` again.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from vlft.common.registry import registry
from vlft.models.blip2.blip2_lm import Blip2LM

#: LAVIS's ``t5_config.dense_act_fn`` (``blip2_t5.py``)
LAVIS_DENSE_ACT_FN = "gelu"


@registry.register_model("blip2_t5")
class Blip2T5(Blip2LM):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain_flant5xl": "configs/models/blip2/blip2_pretrain_flant5xl.yaml",
        "pretrain_flant5xxl": "configs/models/blip2/blip2_pretrain_flant5xxl.yaml",
        "caption_coco_flant5xl": "configs/models/blip2/blip2_caption_flant5xl.yaml",
        "tiny": "configs/models/blip2/blip2_t5_tiny.yaml",
    }
    CONFIG_KEYS = ("dense_act_fn",)  # beyond the default YAMLs (vlft.common.validate_model)
    llm_key = "t5_model"

    @classmethod
    def configure_language_model(cls, text_config, cfg: Mapping[str, Any]) -> None:
        act = cfg.get("dense_act_fn", LAVIS_DENSE_ACT_FN)
        if act:
            text_config.dense_act_fn = act

    @classmethod
    def load_language_model(cls, name: str, trust_remote_code: bool, cfg: Mapping[str, Any]) -> nn.Module:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        cls.configure_language_model(config, cfg)
        return AutoModelForSeq2SeqLM.from_pretrained(name, config=config, trust_remote_code=trust_remote_code)
