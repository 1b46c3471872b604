"""BLIP for NLVR2, two-image visual reasoning (``blip_nlvr``).

Paper: Li et al., "BLIP", ICML 2022 (section 5.4). Reference code: LAVIS's ``blip_nlvr`` and
``nlvr_encoder`` (salesforce/BLIP's ``blip_nlvr.py`` / ``nlvr_encoder.py``). Built on
transformers' ``BlipVisionModel`` and ``BlipTextModel``: every text layer's cross-attention
(``crossattention``) is replaced by ``TwinCrossAttention``, two transformers
``BlipTextSelfAttention`` (``self0`` attends to the first image's ViT tokens, ``self1`` to the
second's) and one output block: ``dense0`` / ``dense1`` project each context, then the two
are averaged, or, from layer ``twin_merge_from_layer`` on (LAVIS: 6 of 12), concatenated and
mixed by ``merge_layer`` (no activation between); dropout, the residual and the LayerNorm
follow as in BERT. The module names are LAVIS's, so its checkpoints map by the ViT renames
alone. A 2-layer MLP (``cls_head``: linear, ReLU, linear) on the [ENC] state gives the logits.

Samples: ``{"image0": [B, 3, H, W], "image1": [B, 3, H, W], "text_input": [str], "label":
LongTensor[B]}``; the sentence starts with [ENC] and is padded to the longest in the batch.
``forward`` returns ``{"loss"}`` (cross-entropy), ``predict`` ``{"predictions", "targets",
"logits"}`` (predictions are the argmax class ids; LAVIS returns the logits as
``predictions`` and takes the argmax in its task).

Weights: a LAVIS NLVR checkpoint (``model_base_nlvr.pth``) maps name for name; a BLIP
pretraining checkpoint (``model_base_capfilt_large.pth``, LAVIS's ``pretrained``) starts both
cross-attentions from its one (``crossattention.self`` -> ``self0`` and ``self1``,
``output.dense`` -> ``dense0`` and ``dense1``), as LAVIS's ``load_from_pretrained``; the merge
layers and the head start fresh (reported as missing).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common.registry import registry
from vlft.models.base_model import BaseModel
from vlft.models.blip.blip_base import (add_enc_token, enable_vit_grad_checkpointing, load_configured_weights,
                                        tokenizer_and_config)

class TwinSelfOutput(nn.Module):
    """LAVIS's twin ``BertSelfOutput``: one projection per image context, averaged or merged."""

    def __init__(self, config, merge: bool):
        super().__init__()
        self.dense0 = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense1 = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.merge_layer = nn.Linear(2 * config.hidden_size, config.hidden_size) if merge else None

    def forward(self, context0: torch.Tensor, context1: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h0, h1 = self.dense0(context0), self.dense1(context1)
        hidden = self.merge_layer(torch.cat([h0, h1], dim=-1)) if self.merge_layer is not None else (h0 + h1) / 2
        return self.LayerNorm(self.dropout(hidden) + input_tensor)


class TwinCrossAttention(nn.Module):
    """A drop-in for ``BlipTextLayer.crossattention`` that takes ``encoder_hidden_states`` as a
    pair ``(image0 tokens, image1 tokens)``; the image tokens are never masked (all real)."""

    def __init__(self, config, layer_idx: int, merge: bool):
        from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

        super().__init__()
        self.self0 = BlipTextSelfAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.self1 = BlipTextSelfAttention(config, is_cross_attention=True, layer_idx=layer_idx)
        self.output = TwinSelfOutput(config, merge)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None, cache=None,
                **kwargs) -> Tuple[torch.Tensor, None]:
        if not isinstance(encoder_hidden_states, (tuple, list)) or len(encoder_hidden_states) != 2:
            raise ValueError("the NLVR text encoder cross-attends to two images: pass encoder_hidden_states="
                             f"(image0_embeds, image1_embeds), got {type(encoder_hidden_states).__name__}")
        context0, _ = self.self0(hidden_states, encoder_hidden_states=encoder_hidden_states[0])
        context1, _ = self.self1(hidden_states, encoder_hidden_states=encoder_hidden_states[1])
        return self.output(context0, context1, hidden_states), None


def make_twin_text_encoder(text_encoder: nn.Module, merge_from_layer: int = 6) -> nn.Module:
    """Replace each layer's cross-attention of a transformers ``BlipTextModel`` by a
    ``TwinCrossAttention`` (initialised as BERT: normal(0, initializer_range), zero biases,
    unit LayerNorms)."""
    config = text_encoder.config
    for i, layer in enumerate(text_encoder.encoder.layer):
        twin = TwinCrossAttention(config, i, merge=i >= merge_from_layer)
        for module in twin.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, config.initializer_range)
                nn.init.zeros_(module.bias)
        layer.crossattention = twin.to(next(layer.parameters()).dtype)
    return text_encoder


@registry.register_model("blip_nlvr")
class BlipNLVR(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "nlvr": "configs/models/blip/nlvr.yaml",
        "tiny": "configs/models/blip/nlvr_tiny.yaml",
    }
    HF_SUB_CONFIGS = {"vision_config": "BlipVisionConfig", "text_config": "BlipTextConfig"}
    lavis_layout = "nlvr"

    def __init__(self, vision_model: nn.Module, text_encoder: nn.Module, tokenizer, num_classes: int = 2):
        """``vision_model``: a transformers ``BlipVisionModel``; ``text_encoder``: a ``BlipTextModel``
        (no pooler) made twin by ``make_twin_text_encoder``."""
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"blip_nlvr: num_classes must be at least 2, got {num_classes}")
        self.vision_model = vision_model
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.enc_token_id = add_enc_token(tokenizer)
        hidden = text_encoder.config.hidden_size
        self.cls_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BlipNLVR":
        from transformers import BlipTextModel, BlipVisionModel

        tokenizer, _, config = tokenizer_and_config(cfg)
        vision = BlipVisionModel(config.vision_config)
        if cfg.get("vit_grad_ckpt", False):
            enable_vit_grad_checkpointing(vision, int(cfg.get("vit_ckpt_layer", 0)))
        text = make_twin_text_encoder(BlipTextModel(config.text_config, add_pooling_layer=False),
                                      int(cfg.get("twin_merge_from_layer", 6)))
        model = cls(vision, text, tokenizer, num_classes=int(cfg.get("num_classes", 2)))
        load_configured_weights(model, cfg)
        return model

    def load_checkpoint(self, path):
        """A LAVIS NLVR or BLIP pretraining checkpoint (recognised by its ``visual_encoder.*``
        keys; a report is logged) or a vlft checkpoint."""
        from vlft.models.convert.lavis_blip import is_lavis_blip, load_lavis_blip
        from vlft.runners.checkpoint import load_model_weights, read

        raw = path if isinstance(path, Mapping) else read(path)
        if is_lavis_blip(raw, self):
            report = load_lavis_blip(self, raw, layout=self.lavis_layout, name=None if isinstance(path, Mapping) else str(path))
            return report.missing, report.unexpected
        return load_model_weights(self, raw)

    # ------------------------------------------------------------------ forward
    def tokenize(self, texts: Sequence[str]):
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = self.text_encoder.config.max_position_embeddings  # LAVIS does not truncate
        text = self.tokenizer(texts, padding="longest", truncation=True, max_length=limit, return_tensors="pt").to(self.device)
        text["input_ids"] = text.input_ids.clone()
        text.input_ids[:, 0] = self.enc_token_id
        return text

    def logits(self, samples: Mapping[str, Any]) -> torch.Tensor:
        """[B, num_classes] for the sentence about (image0, image1)."""
        image0, image1 = samples["image0"], samples["image1"]
        if image0.shape != image1.shape:
            raise ValueError(f"blip_nlvr: image0 {tuple(image0.shape)} and image1 {tuple(image1.shape)} differ in shape")
        text = self.tokenize(samples["text_input"])
        embeds = self.vision_model(pixel_values=torch.cat([image0, image1], dim=0)).last_hidden_state
        embeds0, embeds1 = torch.split(embeds, image0.shape[0])
        hidden = self.text_encoder(input_ids=text.input_ids, attention_mask=text.attention_mask,
                                   encoder_hidden_states=(embeds0, embeds1)).last_hidden_state
        return self.cls_head(hidden[:, 0, :])

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        logits = self.logits(samples)
        targets = torch.as_tensor(samples["label"], device=logits.device).long().view(-1)
        return {"loss": F.cross_entropy(logits, targets)}

    @torch.no_grad()
    def predict(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """``predictions``: LongTensor[B] class ids (argmax); ``targets``: ``samples["label"]`` as a
        LongTensor (-1 where the batch has none); ``logits``: [B, num_classes]."""
        logits = self.logits(samples)
        label = samples.get("label")
        targets = (torch.as_tensor(label, device=logits.device).long().view(-1) if label is not None
                   else torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device))
        return {"predictions": logits.argmax(dim=1), "targets": targets, "logits": logits}
