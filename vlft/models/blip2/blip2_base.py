"""What the BLIP-2 models share (``blip2``, ``blip2_opt``, ``blip2_t5``): the
``Blip2Config`` built from a LAVIS-style ``model:`` section, LAVIS's initialisation of
the queries and of a stage-1 run from its parts (EVA ViT weights, a BERT), the ViT's
setup, and LAVIS / vlft checkpoint loading. See ``blip2_qformer`` and ``blip2_lm``."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch
from torch import nn

from vlft.models.base_model import BaseModel


def build_qformer_config(cfg: Mapping[str, Any], tokenizer, text_input: bool = True):
    """A ``Blip2Config`` from the ``model:`` section: the ViT named by ``vit_model`` (see
    ``vlft.models.eva_vit``), a BERT-base Q-Former unless ``qformer_config`` overrides it."""
    from transformers import Blip2Config

    from vlft.models.eva_vit import vision_config

    vision = vision_config(cfg.get("vit_model", "eva_clip_g"), cfg.get("image_size", 224), **dict(cfg.get("vision_config") or {}))
    qformer = dict(cross_attention_frequency=cfg.get("cross_attention_freq", 2), encoder_hidden_size=vision.hidden_size,
                   use_qformer_text_input=text_input)
    if tokenizer is not None:
        qformer.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    qformer.update(dict(cfg.get("qformer_config") or {}))
    extra = {"text_config": dict(cfg["text_config"])} if cfg.get("text_config") else {}
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer, num_query_tokens=cfg.get("num_query_token", 32),
                       image_text_hidden_size=cfg.get("embed_dim", 256), **extra)


def init_query_tokens(blip2: nn.Module) -> None:
    """LAVIS's initialisation of the learned queries (transformers' leaves them at zero,
    which makes every query identical until trained): normal, std ``initializer_range``."""
    with torch.no_grad():
        blip2.query_tokens.normal_(0.0, blip2.config.qformer_config.initializer_range)


def init_parts(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """The starting points of a model trained from its parts, as LAVIS's stage 1:
    ``vit_pretrained`` (EVA-CLIP's ViT as LAVIS ships it, ``eva_vit_g.pth``) and
    ``qformer_init`` (a BERT id or directory for the Q-Former's self-attention, FFNs and
    embeddings; the cross-attention starts fresh)."""
    from vlft.common.utils import resolve_data_path
    from vlft.models.convert import lavis_blip2

    if cfg.get("vit_pretrained"):
        lavis_blip2.load_eva_vit(model.blip2.vision_model, str(resolve_data_path(cfg["vit_pretrained"])))
    if cfg.get("qformer_init"):
        if not hasattr(model.blip2, "embeddings"):
            raise ValueError("model.qformer_init initialises a stage-1 Q-Former (blip2); a stage-2 model starts "
                             "from a stage-1 checkpoint (model.pretrained) instead")
        lavis_blip2.init_qformer_from_bert(model.blip2, str(cfg["qformer_init"]), itg_head=getattr(model, "itg_head", None))


def prepare_vit(model_cfg: Mapping[str, Any], vision_model: nn.Module) -> None:
    from vlft.models.eva_vit import prepare_vision_encoder

    prepare_vision_encoder(vision_model, freeze_vit=bool(model_cfg.get("freeze_vit", True)),
                           vit_precision=str(model_cfg.get("vit_precision", "fp16")),
                           use_grad_checkpoint=bool(model_cfg.get("use_grad_checkpoint", False)))


def decode_texts(tokenizer, ids) -> List[str]:
    """Generated ids as LAVIS's text: special tokens skipped, transformers 4.26's
    ``clean_up_tokenization_spaces`` applied (LAVIS 1.0.2 decoded with it: "a cat , sitting"
    -> "a cat, sitting"), stripped. transformers 5 no longer applies it by default and skips it
    for BPE tokenizers (OPT's), so it is applied here, with the tokenizer's own rules."""
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [tokenizer.clean_up_tokenization(t).strip() for t in texts]


_TORCH_CKPT = (".pth", ".pt", ".bin", ".safetensors")


def hf_source(cfg: Mapping[str, Any]) -> Optional[str]:
    """``pretrained`` when it names a HF model (an id or a directory) rather than a file."""
    pretrained = cfg.get("pretrained") if cfg.get("load_pretrained", False) else None
    return str(pretrained) if pretrained and not str(pretrained).endswith(_TORCH_CKPT) else None


def load_pretrained_blip2(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """``pretrained`` (a LAVIS ``.pth`` or a vlft checkpoint; a HF model was loaded whole
    already) when ``load_pretrained``, then ``finetuned`` when ``load_finetuned``, each on
    top of the current weights."""
    from vlft.common.utils import resolve_data_path

    for flag, key in (("load_pretrained", "pretrained"), ("load_finetuned", "finetuned")):
        if cfg.get(flag, False) and cfg.get(key) and not (key == "pretrained" and hf_source(cfg)):
            model.load_checkpoint(str(resolve_data_path(cfg[key])))


class Blip2Base(BaseModel):
    """What every BLIP-2 model shares: LAVIS checkpoint loading and the ViT's setup."""

    hf_attr = "blip2"
    # beyond the default YAMLs (checked by vlft.common.validate_model); vision_config
    # overrides the vit_model's Blip2VisionConfig (vlft.models.eva_vit.vision_config)
    CONFIG_KEYS = ("vit_pretrained", "qformer_init", "trust_remote_code")
    HF_SUB_CONFIGS = {"vision_config": "Blip2VisionConfig", "qformer_config": "Blip2QFormerConfig",
                      "text_config": "auto:opt"}

    def load_checkpoint(self, path):
        """A LAVIS BLIP-2 checkpoint (recognised by its keys; a report of missing and
        unexpected keys is logged) or a vlft checkpoint."""
        from vlft.models.convert.lavis_blip2 import is_lavis_blip2, load_lavis_blip2
        from vlft.runners.checkpoint import load_model_weights, read

        raw = path if isinstance(path, Mapping) else read(path)
        state = raw.get("model", raw)
        if is_lavis_blip2(state):
            report = load_lavis_blip2(self, raw, prefix=f"{self.hf_attr}.")
            return report.missing, report.unexpected
        return load_model_weights(self, raw)
