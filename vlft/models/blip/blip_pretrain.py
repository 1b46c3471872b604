"""BLIP pre-training: ITC + ITM + LM with momentum distillation (``blip_pretrain``).

Paper: Li et al., "BLIP", ICML 2022 (section 3.2). Reference code: LAVIS's ``blip_pretrain``.
Built on transformers' ``BlipForImageTextRetrieval`` (ViT, text encoder, projections, ITM
head; see ``blip_base`` for the momentum encoders, queues and checkpoint formats) and a
``BlipTextLMHeadModel`` image-grounded decoder (``text_decoder``).

The decoder shares every weight with the encoder except its self-attention, as LAVIS's
``tie_encoder_decoder_weights(..., skip_key="/attention")``: the embeddings and, in every
layer, the cross-attention, the intermediate and the output blocks are the encoder's modules
(so their state-dict entries appear under both names, as in LAVIS's checkpoints); the
decoder's ``attention`` (causal self-attention) is its own; its output projection is the
shared word embeddings.

The losses, as LAVIS's ``BlipPretrain.forward``:

- ITC with momentum distillation against the queues; only the diagonal is positive (LAVIS's
  pre-training ignores image ids; ``use_image_ids: true`` makes captions of the same image
  positives, across an id queue, as ``blip_retrieval`` does);
- ITM with one negative image per text and one negative text per image drawn from
  ``softmax(sims) + 1e-4`` over the batch's columns of the ITC similarities (against the
  momentum features), the diagonal zeroed;
- LM: the caption decoded from [DEC] with a causal mask, cross-attending to the image,
  label smoothing 0.1, padding ignored.

``loss = loss_itc + loss_itm + loss_lm``. Initial weights as LAVIS's ``from_config``:
``vit_pretrained`` (DeiT-B, LAVIS's URL, or any timm-named ViT file) and ``text_pretrained``
(``bert-base-uncased``: encoder, decoder self-attention and the MLM head; the cross-attention
and the [DEC] / [ENC] rows start fresh); LAVIS never loads ``pretrained`` here, so the
``base`` type leaves ``load_pretrained`` off.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common.registry import registry
from vlft.models.blip.blip_base import BlipEncoderBase
from vlft.models.blip.blip_momentum import global_image_ids

def tie_decoder_to_encoder(text_encoder: nn.Module, text_decoder: nn.Module) -> None:
    """Make ``text_decoder`` (a ``BlipTextLMHeadModel``) use ``text_encoder``'s (a ``BlipTextModel``)
    modules for everything except each layer's self-attention (``attention``)."""
    decoder = text_decoder.bert
    if len(decoder.encoder.layer) != len(text_encoder.encoder.layer):
        raise ValueError(f"the decoder has {len(decoder.encoder.layer)} layers, the encoder "
                         f"{len(text_encoder.encoder.layer)}: they cannot share weights")
    decoder.embeddings = text_encoder.embeddings
    for dec_layer, enc_layer in zip(decoder.encoder.layer, text_encoder.encoder.layer):
        dec_layer.crossattention = enc_layer.crossattention
        dec_layer.intermediate = enc_layer.intermediate
        dec_layer.output = enc_layer.output
    text_decoder.cls.predictions.decoder.weight = text_encoder.embeddings.word_embeddings.weight


@registry.register_model("blip_pretrain")
class BlipPretrain(BlipEncoderBase):
    hf_attr = None  # no save_hf (no transformers counterpart): LoRA adapters keep vlft's names
    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": "configs/models/blip/pretrain_base.yaml",
        "tiny": "configs/models/blip/pretrain_tiny.yaml",
    }
    CONFIG_KEYS = ("tie_enc_dec_weights",)  # beyond the default YAMLs (vlft.common.validate_model)

    def __init__(self, blip: nn.Module, text_decoder: nn.Module, tokenizer, max_txt_len: int = 30,
                 queue_size: int = 57600, alpha: float = 0.4, momentum: float = 0.995, use_image_ids: bool = False,
                 tie_enc_dec_weights: bool = True):
        """``blip``: a transformers ``BlipForImageTextRetrieval``; ``text_decoder``: a
        ``BlipTextLMHeadModel`` of the same text config."""
        super().__init__(blip, tokenizer, max_txt_len=max_txt_len, queue_size=queue_size, alpha=alpha,
                         momentum=momentum, idx_queue=use_image_ids)
        self.text_decoder = text_decoder
        self.use_image_ids = bool(use_image_ids)
        if tie_enc_dec_weights:
            tie_decoder_to_encoder(blip.text_encoder, text_decoder)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BlipPretrain":
        from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel

        blip, tokenizer = cls.build_blip(cfg)
        decoder = BlipTextLMHeadModel(blip.config.text_config)
        model = cls(blip, decoder, tokenizer, max_txt_len=cfg.get("max_txt_len", 30),
                    queue_size=cfg.get("queue_size", 57600), alpha=cfg.get("alpha", 0.4),
                    momentum=cfg.get("momentum", 0.995), use_image_ids=cfg.get("use_image_ids", False),
                    tie_enc_dec_weights=cfg.get("tie_enc_dec_weights", True))
        model.init_parts(cfg)
        return model.finish_from_config(cfg)

    def init_parts(self, cfg: Mapping[str, Any]) -> None:
        """``vit_pretrained`` and ``text_pretrained``: the starting points of pre-training."""
        from vlft.models.blip.blip_base import resolve_weights
        from vlft.models.convert import lavis_blip

        changed = False
        if cfg.get("vit_pretrained"):
            lavis_blip.load_vit_init(self.blip.vision_model, resolve_weights(cfg["vit_pretrained"]))
            changed = True
        if cfg.get("text_pretrained"):
            lavis_blip.init_text_from_bert(self, str(cfg["text_pretrained"]))
            changed = True
        if changed and self.queue_size > 0:
            self.copy_to_momentum()

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        image = samples["image"]
        idx = None
        if self.use_image_ids:
            if samples.get("image_id") is None:
                raise KeyError("blip_pretrain with use_image_ids needs samples['image_id']; the batch has none")
            idx = global_image_ids(samples["image_id"], image.device)
        image_embeds, image_feat, text, text_feat, (loss_itc, sim_i2t, sim_t2i) = self.itc_step(samples, idx)

        bs = image.shape[0]
        enc_ids = self.with_enc(text.input_ids)
        with torch.no_grad():
            same = (torch.eye(bs, dtype=torch.bool, device=image.device) if idx is None
                    else idx.view(-1, 1) == idx.view(1, -1))
            weights_t2i = (F.softmax(sim_t2i[:, :bs], dim=1) + 1e-4).masked_fill(same, 0)
            weights_i2t = (F.softmax(sim_i2t[:, :bs], dim=1) + 1e-4).masked_fill(same, 0)
        loss_itm = self.itm_loss(image_embeds, enc_ids, text.attention_mask, weights_t2i, weights_i2t)

        dec_ids = text.input_ids.clone()
        dec_ids[:, 0] = self.tokenizer.bos_token_id
        labels = dec_ids.masked_fill(dec_ids == self.tokenizer.pad_token_id, -100)
        loss_lm = self.text_decoder(input_ids=dec_ids, attention_mask=text.attention_mask,
                                    encoder_hidden_states=image_embeds, labels=labels).loss
        return {"loss": loss_itc + loss_itm + loss_lm, "loss_itc": loss_itc.detach(), "loss_itm": loss_itm.detach(),
                "loss_lm": loss_lm.detach()}

    def save_hf(self, out_dir: str):
        raise NotImplementedError("blip_pretrain has no transformers counterpart (its decoder shares the encoder's "
                                  "weights); load the checkpoint into blip_retrieval or blip_caption and save that")
