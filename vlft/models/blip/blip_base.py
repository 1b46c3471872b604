"""What BLIP's encoder models share: ``blip_retrieval``, ``blip_image_text_matching``,
``blip_feature_extractor`` (``blip_retrieval.py``) and ``blip_pretrain``.

Paper: Li et al., "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation", ICML 2022. Reference code: LAVIS's
``blip_retrieval``, ``blip_image_text_matching``, ``blip_feature_extractor`` and
``base_model`` (``MomentumDistilationMixin``, ``SharedQueueMixin``). Built on transformers'
``BlipForImageTextRetrieval``, held as ``self.blip``: the ViT (``vision_model``), the BERT text
encoder with cross-attention to the image (``text_encoder``), the ITC projections
(``vision_proj``, ``text_proj``) and the ITM head (``itm_head``); ``save_hf`` writes it as
transformers loads it. Checkpoints: a HF repo id / directory (``from_pretrained``), a LAVIS /
original BLIP ``.pth`` (``vlft.models.convert.lavis_blip.load_lavis_blip``) or a vlft checkpoint.

LAVIS semantics kept:

- unimodal text starts with [CLS]; the image-grounded text (ITM) with [ENC] (added to a
  tokenizer that lacks it, as LAVIS's ``init_tokenizer`` does);
- ITC features are the normalized projections of the [CLS] vectors; the temperature
  ``temp`` starts at 0.07 and is clamped to [0.001, 0.5] before every training step;
- momentum distillation (``queue_size > 0``, ``blip_momentum``): momentum copies of the
  encoders and projections, feature queues, ITC targets distilled from the momentum
  similarities;
- ITM negatives are drawn row by row (one ``torch.multinomial`` per row, images first, then
  texts, as LAVIS), so a seed gives LAVIS's negatives;
- a configured checkpoint loads as LAVIS's ``load_checkpoint_from_config``: with
  ``load_finetuned`` only ``finetuned`` (a complete LAVIS checkpoint), else ``pretrained``;
  the queue pointer restarts at 0.

Checked against LAVIS's own code (its ``blip_retrieval`` / ``blip_image_text_matching`` /
``blip_feature_extractor`` / ``blip_pretrain`` / ``blip_nlvr`` under transformers 4.26) on tiny
random models loaded from the same LAVIS-named weights: every loss of a training step (dropout
on, same seed: the same sampled negatives), the momentum encoders and queues after it, the
retrieval similarities and ITM logits, the match scores and features agree exactly (0.0).

Differences, each an extension where LAVIS fails or has nothing:

- the momentum copies are *buffers*, not frozen parameters: vlft's checkpoints keep
  trainable weights and buffers, so a resumed run continues with its momentum encoders and
  queues (LAVIS's runner drops frozen weights and restarts them from the pretrained file).
  Every rank updates them identically from synced weights and all-gathered features, so DDP
  is told not to broadcast them each step (``_ddp_params_and_buffers_to_ignore``);
- in eval mode ``forward`` computes the losses without updating the momentum encoders or the
  queues (LAVIS only calls it for training; vlft's ``image_text_pretrain`` validates with it);
- ``image_id`` may hold strings or any hashable (LAVIS needs a tensor, issue #629): they are
  mapped to stable 62-bit codes, equal across batches and ranks as the id queue needs;
- a batch whose images are all the same (no negative to draw) falls back to a uniform draw
  where LAVIS's ``torch.multinomial`` raises; a queue size that is not a multiple of the
  global batch wraps around where LAVIS asserts;
- ``queue_size: 0`` trains without momentum distillation (in-batch ITC with image-id
  targets): the ITM and feature-extraction types use it, so that an inference model does not
  carry a second copy of its encoders;
- the BLIP ViT has no stochastic depth in transformers: LAVIS's ``vit_drop_path_rate`` (and
  the 0.1 its large ViT always uses) is not applied.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlft.models.base_model import BaseModel
from vlft.models.blip.blip_momentum import MomentumDistillation, sample_negatives

logger = logging.getLogger(__name__)
_TORCH_CKPT = (".pth", ".pt", ".bin", ".safetensors")


# ---------------------------------------------------------------- small helpers
def add_enc_token(tokenizer) -> int:
    """The id of [ENC] (BLIP's image-grounded-text start token), added when missing."""
    if "[ENC]" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return int(tokenizer.convert_tokens_to_ids("[ENC]"))


def enable_vit_grad_checkpointing(vision_model: nn.Module, last_n: int) -> int:
    """Checkpoint the last ``last_n`` ViT blocks (LAVIS's ``vit_grad_ckpt`` + ``vit_ckpt_layer``:
    block i when ``i >= depth - ckpt_layer``). Memory only: the ViT has no dropout, so the
    values are unchanged. Returns the number of blocks checkpointed."""
    import functools

    from torch.utils.checkpoint import checkpoint

    layers = vision_model.encoder.layers
    chosen = list(layers)[max(len(layers) - int(last_n), 0):] if last_n > 0 else []
    for layer in chosen:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    return len(chosen)


def resolve_weights(path: str) -> str:
    """Where a configured checkpoint is (relative paths under the cache root)."""
    from vlft.common.utils import resolve_data_path

    return str(resolve_data_path(str(path)))


def hf_pretrained(cfg: Mapping[str, Any]) -> Optional[str]:
    """``pretrained`` when ``load_pretrained`` and it names a HF model (an id or a directory)."""
    pretrained = cfg.get("pretrained") if cfg.get("load_pretrained", False) else None
    if pretrained and not str(pretrained).endswith(_TORCH_CKPT) and "://" not in str(pretrained):
        return str(pretrained)
    return None


def load_configured_weights(model: BaseModel, cfg: Mapping[str, Any]) -> None:
    """LAVIS's ``load_checkpoint_from_config``: ``finetuned`` when ``load_finetuned``, else
    ``pretrained`` when ``load_pretrained`` (a HF ``pretrained`` was loaded whole already). A
    vlft checkpoint as ``finetuned`` holds trainable weights only, so ``pretrained`` goes under it."""
    from vlft.models.convert.lavis_blip import is_lavis_blip
    from vlft.runners.checkpoint import read

    pretrained = cfg.get("pretrained") if cfg.get("load_pretrained", False) and not hf_pretrained(cfg) else None
    if cfg.get("load_finetuned", False) and cfg.get("finetuned"):
        raw = read(resolve_weights(cfg["finetuned"]))
        if pretrained and not is_lavis_blip(raw, model):
            model.load_checkpoint(resolve_weights(pretrained))
        model.load_checkpoint(raw)
    elif pretrained:
        model.load_checkpoint(resolve_weights(pretrained))


def tokenizer_and_config(cfg: Mapping[str, Any]):
    """(tokenizer with [ENC], its [ENC] id, ``BlipConfig``) for a model built from ``cfg``."""
    from vlft.models.blip.blip_caption import build_blip_config, load_tokenizer

    tokenizer = load_tokenizer(cfg.get("tokenizer") or hf_pretrained(cfg) or "bert-base-uncased")
    enc_id = add_enc_token(tokenizer)
    config = build_blip_config(cfg, tokenizer)
    config.image_text_hidden_size = int(cfg.get("embed_dim", 256))
    return tokenizer, enc_id, config


# ---------------------------------------------------------------- the model
class BlipEncoderBase(MomentumDistillation, BaseModel):
    """ViT + text encoder + ITC projections + ITM head (``self.blip``), with optional momentum
    encoders and feature queues. Subclasses define ``forward``."""

    hf_attr = "blip"  # BlipForImageTextRetrieval: LoRA adapters export in its names

    lavis_layout = "encoder"  # the key map of vlft.models.convert.lavis_blip
    # beyond the default YAMLs (checked by vlft.common.validate_model)
    CONFIG_KEYS = ("trust_remote_code", "vit_grad_ckpt", "vit_ckpt_layer")
    HF_SUB_CONFIGS = {"vision_config": "BlipVisionConfig", "text_config": "BlipTextConfig"}

    def __init__(self, blip: nn.Module, tokenizer, max_txt_len: int = 35, queue_size: int = 0, alpha: float = 0.4,
                 momentum: float = 0.995, idx_queue: bool = True):
        super().__init__()
        self.blip = blip
        self.tokenizer = tokenizer
        self.enc_token_id = add_enc_token(tokenizer)
        self.max_txt_len = max_txt_len
        self.alpha, self.momentum, self.queue_size = float(alpha), float(momentum), int(queue_size)
        self.temp = nn.Parameter(0.07 * torch.ones([]))
        if self.queue_size > 0:
            self.init_momentum(blip, idx_queue)

    # ------------------------------------------------------------------ encoders
    def tokenize(self, texts: Sequence[str], padding: str = "max_length", max_length: Optional[int] = None):
        """``padding="max_length"`` to ``max_txt_len`` as LAVIS's training and retrieval code;
        ``"longest"`` (capped at the position table) as its ITM and feature extraction."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = max_length or self.max_txt_len
        return self.tokenizer(texts, padding=padding, truncation=True, max_length=limit, return_tensors="pt").to(self.device)

    def with_enc(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.clone()
        ids[:, 0] = self.enc_token_id
        return ids

    def encode_image(self, image: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        vision = self.momentum_model["vision_model"] if momentum else self.blip.vision_model
        return vision(pixel_values=image).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """The text encoder without the image ([CLS] first: LAVIS's ``mode="text"``)."""
        encoder = self.momentum_model["text_encoder"] if momentum else self.blip.text_encoder
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode_multimodal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          image_embeds: torch.Tensor) -> torch.Tensor:
        """The text cross-attending to every image token (no image mask: all tokens are real)."""
        return self.blip.text_encoder(input_ids=input_ids, attention_mask=attention_mask,
                                      encoder_hidden_states=image_embeds).last_hidden_state

    def image_feat(self, image_embeds: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.momentum_model["vision_proj"] if momentum else self.blip.vision_proj
        return F.normalize(proj(image_embeds[:, 0, :]), dim=-1)

    def text_feat(self, text_embeds: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.momentum_model["text_proj"] if momentum else self.blip.text_proj
        return F.normalize(proj(text_embeds[:, 0, :]), dim=-1)

    def itm_loss(self, image_embeds: torch.Tensor, enc_ids: torch.Tensor, atts: torch.Tensor,
                 weights_t2i: torch.Tensor, weights_i2t: torch.Tensor,
                 world: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """ITM over the positive pairs, a sampled negative image per text and a sampled negative
        text per image (``weights_*`` [B, candidates]; ``world``: the candidates' image embeds,
        ids and masks when they come from every rank, else this batch's)."""
        b = image_embeds.shape[0]
        output_pos = self.encode_multimodal(enc_ids, atts, image_embeds)
        cand_embeds, cand_ids, cand_atts = world or (image_embeds, enc_ids, atts)
        neg_image = sample_negatives(weights_t2i)
        neg_text = sample_negatives(weights_i2t)
        output_neg = self.encode_multimodal(torch.cat([enc_ids, cand_ids[neg_text]]), torch.cat([atts, cand_atts[neg_text]]),
                                            torch.cat([cand_embeds[neg_image], image_embeds]))
        logits = self.blip.itm_head(torch.cat([output_pos[:, 0, :], output_neg[:, 0, :]]))
        labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)]).to(logits.device)
        return F.cross_entropy(logits, labels)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def match(self, samples: Mapping[str, Any], match_head: str = "itm") -> torch.Tensor:
        """LAVIS's ``BlipITM``: ``itm`` gives each pair's [B, 2] match logits (text with [ENC]);
        ``itc`` the [n_images, n_texts] cosine similarities of every image with every text."""
        if match_head not in ("itm", "itc"):
            raise ValueError(f"match_head must be 'itm' or 'itc', got {match_head!r}")
        image_embeds = self.encode_image(samples["image"])
        text = self.tokenize(samples["text_input"], padding="longest")
        if match_head == "itm":
            return self.blip.itm_head(self.encode_multimodal(self.with_enc(text.input_ids), text.attention_mask, image_embeds)[:, 0, :])
        return self.image_feat(image_embeds) @ self.text_feat(self.encode_text(text.input_ids, text.attention_mask)).t()

    @torch.no_grad()
    def extract_features(self, samples: Mapping[str, Any], mode: str = "multimodal"):
        """LAVIS's ``BlipFeatureExtractor.extract_features``: ``image`` (ViT tokens and their
        normalized projections, every token), ``text`` (encoder tokens and their normalized
        projections) or ``multimodal`` (ViT tokens and the [ENC] text's cross-attending output).
        A dict that also reads as attributes (``features.image_embeds``); absent fields are None."""
        from vlft.models.blip.blip_outputs import BlipOutputFeatures

        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        out: Dict[str, torch.Tensor] = {}
        limit = self.blip.config.text_config.max_position_embeddings  # LAVIS does not truncate
        if mode in ("image", "multimodal"):
            if samples.get("image") is None:
                raise ValueError(f"extract_features(mode={mode!r}) needs samples['image']")
            out["image_embeds"] = self.encode_image(samples["image"])
            if mode == "image":
                out["image_embeds_proj"] = F.normalize(self.blip.vision_proj(out["image_embeds"]), dim=-1)
        if mode in ("text", "multimodal"):
            if samples.get("text_input") is None:
                raise ValueError(f"extract_features(mode={mode!r}) needs samples['text_input']")
            text = self.tokenize(samples["text_input"], padding="longest", max_length=limit)
            if mode == "text":
                out["text_embeds"] = self.encode_text(text.input_ids, text.attention_mask)
                out["text_embeds_proj"] = F.normalize(self.blip.text_proj(out["text_embeds"]), dim=-1)
            else:
                out["multimodal_embeds"] = self.encode_multimodal(self.with_enc(text.input_ids), text.attention_mask,
                                                                  out["image_embeds"])
        return BlipOutputFeatures(**out)

    # retrieval (task ``retrieval``), as LAVIS's ``compute_sim_matrix``: ITC cosine similarity
    # (no temperature) for the candidates, plus the raw ITM logit of "match" for the re-ranked ones
    @torch.no_grad()
    def retrieval_image_features(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        embeds = self.encode_image(image)
        return {"embeds": embeds, "feat": self.image_feat(embeds)}

    @torch.no_grad()
    def retrieval_text_features(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        text = self.tokenize(texts, padding="max_length")
        return {"ids": text.input_ids, "atts": text.attention_mask,
                "feat": self.text_feat(self.encode_text(text.input_ids, text.attention_mask))}

    @staticmethod
    def retrieval_similarity(image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
        """[n_images, n_texts] ITC cosine similarity."""
        return image_feat.float() @ text_feat.float().t()

    @torch.no_grad()
    def retrieval_itm_score(self, image_embeds: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor) -> torch.Tensor:
        """The ITM head's "match" logit of each (image, text) row pair (LAVIS adds the logit,
        not a probability, to the ITC similarity); the text starts with [ENC]."""
        return self.blip.itm_head(self.encode_multimodal(self.with_enc(ids), atts, image_embeds)[:, 0, :])[:, 1]

    # ------------------------------------------------------------------ checkpoints
    def load_checkpoint(self, path):
        """A LAVIS / original BLIP checkpoint (recognised by its keys; a report of missing,
        unexpected and dropped keys is logged) or a vlft checkpoint."""
        from vlft.models.convert.lavis_blip import is_lavis_blip, load_lavis_blip
        from vlft.runners.checkpoint import load_model_weights, read

        raw = path if isinstance(path, Mapping) else read(path)
        if is_lavis_blip(raw, self):
            report = load_lavis_blip(self, raw, layout=self.lavis_layout, name=str(path) if not isinstance(path, Mapping) else None)
            if self.queue_size > 0 and any(k.startswith("momentum_model.") for k in report.missing):
                logger.info("the checkpoint has no momentum encoders: they start as copies of the loaded ones")
                self.copy_to_momentum()
            return report.missing, report.unexpected
        return load_model_weights(self, raw)

    def no_weight_decay(self) -> set:
        return {"temp"}

    def save_hf(self, out_dir: str) -> Path:
        """The model as transformers' ``BlipForImageTextRetrieval`` (the temperature, momentum
        encoders and queues have no place there and are not written)."""
        from transformers import BlipImageProcessor

        from vlft.processors.image import CLIP_MEAN, CLIP_STD

        out = Path(out_dir)
        self.blip.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        size = self.blip.config.vision_config.image_size
        BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
                           image_std=list(CLIP_STD)).save_pretrained(out)
        return out

    @classmethod
    def build_blip(cls, cfg: Mapping[str, Any]):
        """(``BlipForImageTextRetrieval``, tokenizer) from the ``model:`` section: a HF model
        loaded whole, or a fresh one from the configured sizes."""
        from transformers import BlipForImageTextRetrieval

        source = hf_pretrained(cfg)
        tokenizer, enc_id, config = tokenizer_and_config(cfg)
        if source:
            blip = BlipForImageTextRetrieval.from_pretrained(source, trust_remote_code=bool(cfg.get("trust_remote_code", False)))
            if enc_id >= blip.config.text_config.vocab_size:
                raise ValueError(f"{source}: its tokenizer has no [ENC] and its {blip.config.text_config.vocab_size} "
                                 "word embeddings leave no row for one; give model.tokenizer a BLIP tokenizer")
            size = cfg.get("image_size")
            if size and int(size) != blip.config.vision_config.image_size:
                from vlft.models.blip.blip_vqa import resize_image_size

                resize_image_size(blip, int(size))
        else:
            blip = BlipForImageTextRetrieval(config)
        if cfg.get("vit_grad_ckpt", False):
            enable_vit_grad_checkpointing(blip.vision_model, int(cfg.get("vit_ckpt_layer", 0)))
        return blip, tokenizer

    def finish_from_config(self, cfg: Mapping[str, Any]) -> "BlipEncoderBase":
        load_configured_weights(self, cfg)
        self.reset_queue_ptr()  # LAVIS: "[IMPORTANT] to reset queue pointer to 0"
        return self
