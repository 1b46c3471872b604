"""BLIP image captioning (``blip_caption``).

Paper: Li et al., "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation", ICML 2022. Reference code:
salesforce/BLIP and LAVIS's ``blip_caption``. Built on transformers'
``BlipForConditionalGeneration`` (ViT + BERT decoder with cross-attention).

Weights load from a HF repo id or local HF directory (``from_pretrained``), from a
LAVIS / original BLIP ``.pth`` (keys renamed by ``vlft.models.convert.lavis_blip``),
or from a vlft checkpoint (``finetuned``). LAVIS semantics kept: the decoder starts
with [DEC], the prompt ("a picture of ") is excluded from the loss and stripped from
generated captions, and the LM loss uses label smoothing 0.1.
"""
from __future__ import annotations

import copy
import inspect
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from vlft.common.registry import registry
from vlft.models.base_model import BaseModel
from vlft.models.generation_cache import BeamSharedCrossAttentionCache, beam_search_cache, prefill_cross_attention

logger = logging.getLogger(__name__)
_TORCH_CKPT = (".pth", ".pt", ".bin", ".safetensors")


def load_tokenizer(name: str, enc_token: bool = True):
    """``shapes`` (the demo's word-level tokenizer), ``shapes_qa`` (the same plus the
    synthetic questions' words) or a HF tokenizer id / directory. A BERT tokenizer that
    lacks a start token gets LAVIS's: ``[DEC]`` as bos, plus ``[ENC]`` (an additional
    special token) when ``enc_token``. BLIP adds both (``BlipBase.init_tokenizer``:
    bert-base-uncased grows from 30,522 to 30,524 tokens); BLIP-2 adds only ``[DEC]``
    (``Blip2Base.init_tokenizer``: 30,523, as in HF's ``Salesforce/blip2-*``), so its
    models pass ``enc_token=False``."""
    if name in ("shapes", "shapes_qa"):
        from vlft.datasets.synthetic_shapes import QA_TEXT, shapes_tokenizer

        return shapes_tokenizer() if name == "shapes" else shapes_tokenizer(extra_text=("a picture of", QA_TEXT))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.bos_token is None:
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        if enc_token:
            tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def build_blip_config(cfg: Mapping[str, Any], tokenizer):
    """A ``BlipConfig`` from the ``model:`` section (``text_config`` / ``vision_config``
    override any field). Defaults as LAVIS builds BLIP: the ViT's LayerNorms use eps
    1e-6 (LAVIS's ``vit.py``; transformers' ``BlipVisionConfig`` default is 1e-5, and HF
    ``Salesforce/blip-*`` checkpoints keep theirs, as they load through
    ``from_pretrained``), the BERT's 1e-12, the LM loss label smoothing 0.1."""
    from transformers import BlipConfig

    text = dict(cfg.get("text_config") or {})
    text.setdefault("vocab_size", len(tokenizer))
    text.update(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id)
    text.setdefault("label_smoothing", 0.1)
    vision = dict(cfg.get("vision_config") or {})
    vision.setdefault("image_size", cfg.get("image_size", 384))
    vision.setdefault("layer_norm_eps", 1e-6)
    text.setdefault("encoder_hidden_size", vision.get("hidden_size", 768))
    return BlipConfig(text_config=text, vision_config=vision)


def load_lavis_weights(hf_model: nn.Module, source, convert=None, what: str = "captioning") -> None:
    """Load a LAVIS / original BLIP checkpoint (a ``.pth`` path or its loaded dict) into a
    transformers BLIP model, keys renamed by ``convert`` (default: the caption model's map),
    the ViT position embedding interpolated to the model's image size; unexpected keys are
    an error, missing ones a warning. ``what`` names the use in the log."""
    from vlft.models.convert.lavis_blip import convert_lavis_blip_caption, interpolate_pos_embed
    from vlft.runners.checkpoint import read

    raw = source if isinstance(source, Mapping) else read(source)
    name = "checkpoint" if isinstance(source, Mapping) else str(source)
    state, dropped = (convert or convert_lavis_blip_caption)(raw.get("model", raw))
    key = "vision_model.embeddings.position_embedding"
    own = hf_model.state_dict()
    if key in state and state[key].shape != own[key].shape:
        state[key] = interpolate_pos_embed(state[key], own[key].shape[1] - 1)
    result = hf_model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise KeyError(f"{name}: keys with no place in BLIP: {result.unexpected_keys[:10]}")
    logger.info("LAVIS %s: %d tensors loaded, %d dropped (not used for %s)", name, len(state), len(dropped), what)
    if result.missing_keys:  # a partial load is legitimate (e.g. a ViT-only file) but must be visible
        logger.warning("LAVIS %s lacks %d BLIP tensors, which keep their current values: %s%s", name,
                       len(result.missing_keys), result.missing_keys[:5], " ..." if len(result.missing_keys) > 5 else "")


@registry.register_model("blip_caption")
class BlipCaption(BaseModel):
    hf_attr = "blip"  # BlipForConditionalGeneration: LoRA adapters export in its names
    PRETRAINED_MODEL_CONFIG_DICT = {
        "base_coco": "configs/models/blip/caption_base_coco.yaml",
        "large_coco": "configs/models/blip/caption_large_coco.yaml",
        "base": "configs/models/blip/caption_base.yaml",
        "large": "configs/models/blip/caption_large.yaml",
        "tiny": "configs/models/blip/caption_tiny.yaml",
    }
    # what from_config reads beyond the default YAMLs (checked by vlft.common.validate_model)
    CONFIG_KEYS = ("trust_remote_code",)
    HF_SUB_CONFIGS = {"vision_config": "BlipVisionConfig", "text_config": "BlipTextConfig"}
    # generation lengths count the prompt: beyond the decoder's positions F.embedding fails
    POSITION_LIMITS = {"max_txt_len": "text_config", "run.max_len": "text_config"}

    def __init__(self, blip: nn.Module, tokenizer, prompt: str = "a picture of ", max_txt_len: int = 40):
        super().__init__()
        self.blip = blip
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_txt_len = max_txt_len
        # [CLS] + prompt tokens, without [SEP]: the part of each caption the loss ignores
        self.prompt_length = len(tokenizer(prompt).input_ids) - 1 if prompt else 1

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BlipCaption":
        from transformers import BlipForConditionalGeneration

        pretrained = cfg.get("pretrained") if cfg.get("load_pretrained", False) else None
        hf_source = pretrained if pretrained and not str(pretrained).endswith(_TORCH_CKPT) else None
        tokenizer = load_tokenizer(cfg.get("tokenizer") or hf_source or "bert-base-uncased")
        if hf_source:
            blip = BlipForConditionalGeneration.from_pretrained(hf_source, trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        else:
            blip = BlipForConditionalGeneration(build_blip_config(cfg, tokenizer))
            if pretrained:
                from vlft.common.utils import resolve_data_path

                load_lavis_weights(blip, str(resolve_data_path(pretrained)))
        model = cls(blip, tokenizer, prompt=cfg.get("prompt", "a picture of "), max_txt_len=cfg.get("max_txt_len", 40))
        if cfg.get("load_finetuned", False) and cfg.get("finetuned"):
            model.load_checkpoint(cfg.finetuned)
        return model

    def load_checkpoint(self, path: str):
        """A vlft checkpoint, or a LAVIS ``blip_caption`` checkpoint (recognised by its keys)."""
        from vlft.runners.checkpoint import load_model_weights, read

        raw = read(path) if not isinstance(path, Mapping) else path
        state = raw.get("model", raw)
        if any(k.startswith(("visual_encoder.", "text_decoder.")) for k in state):
            load_lavis_weights(self.blip, raw)
            return [], []
        return load_model_weights(self, raw)

    # ------------------------------------------------------------------ training
    def tokenize(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_txt_len,
                              return_tensors="pt").to(self.device)

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        text = self.tokenize(list(samples["text_input"]))
        input_ids = text.input_ids.clone()
        input_ids[:, 0] = self.tokenizer.bos_token_id  # the decoder starts from [DEC]
        labels = input_ids.masked_fill(input_ids == self.tokenizer.pad_token_id, -100)
        labels[:, : self.prompt_length] = -100  # the prompt is given, not learned
        out = self.blip(pixel_values=samples["image"], input_ids=input_ids, attention_mask=text.attention_mask, labels=labels)
        return {"loss": out.loss}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, samples: Mapping[str, Any], use_nucleus_sampling: bool = False, num_beams: int = 3,
                 max_length: int = 30, min_length: int = 10, top_p: float = 0.9, repetition_penalty: float = 1.0,
                 num_captions: int = 1, prompt: Optional[str] = None) -> List[str]:
        """Captions for ``samples["image"]`` (``num_captions`` per image, image-major order).
        ``max_length`` / ``min_length`` count tokens including the prompt, as in LAVIS."""
        image = samples["image"]
        prompt = self.prompt if prompt is None else prompt
        prompt_ids = self.tokenizer([prompt] * image.size(0), return_tensors="pt").input_ids.to(image.device)
        decoding = dict(max_length=max_length, min_length=min_length, repetition_penalty=repetition_penalty,
                        num_return_sequences=num_captions)
        if use_nucleus_sampling:
            decoding.update(do_sample=True, top_p=top_p, num_beams=1)
        else:
            decoding.update(num_beams=max(num_beams, num_captions), do_sample=False)
            # beam search without re-copying the image's cross-attention keys/values every step
            decoding.update(beam_search_cache(decoding["num_beams"]))
        out = self.generate_ids(image, prompt_ids, decoding)
        captions = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        stripped = prompt.strip()
        return [c[len(stripped):].strip() if stripped and c.startswith(stripped) else c.strip() for c in captions]

    def generate_ids(self, image: torch.Tensor, prompt_ids: torch.Tensor, decoding: Dict[str, Any]) -> torch.Tensor:
        """Token ids as ``BlipForConditionalGeneration.generate(pixel_values, input_ids)``
        gives them (its steps: the ViT, [DEC] in place of [CLS], the prompt without its
        [SEP], [SEP] as the end, the text decoder's ``generate``), except that with vlft's
        beam cache the image's cross-attention keys and values are computed once per image,
        not once per beam (``prefill_cross_attention``); the ids are the same (tested)."""
        text = self.blip.config.text_config
        image_embeds = self.blip.vision_model(pixel_values=image)[0]
        cache = decoding.get("cache")
        if isinstance(cache, BeamSharedCrossAttentionCache):
            prefill_cross_attention(cache, self.blip.text_decoder.bert.encoder.layer, image_embeds)
        input_ids = prompt_ids.clone()
        input_ids[:, 0] = text.bos_token_id
        return self.blip.text_decoder.generate(
            input_ids=input_ids[:, :-1], eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image.device),
            **decoding)

    @torch.no_grad()
    def extract_features(self, samples: Mapping[str, Any], mode: str = "image") -> Dict[str, torch.Tensor]:
        """Image embeddings (``mode="image"``): the ViT's patch features and its [CLS] vector."""
        if mode != "image":
            raise ValueError(f"blip_caption extracts image features only (mode='image'), got mode={mode!r}")
        hidden = self.blip.vision_model(pixel_values=samples["image"]).last_hidden_state
        return {"image_embeds": hidden, "image_embeds_proj": hidden[:, 0]}

    # ------------------------------------------------------------------ export
    def save_hf(self, out_dir: str) -> Path:
        """Save in HF format (model, tokenizer, image processor) for ``transformers.pipeline``."""
        from transformers import BlipImageProcessor

        from vlft.processors.image import CLIP_MEAN, CLIP_STD

        out = Path(out_dir)
        self.blip.save_pretrained(out)
        # transformers' image-text-to-text pipeline adds max_new_tokens=256 unless the model's generation
        # config sets a length, which runs past a small decoder's position table (IndexError). BLIP's
        # generate() hands decoding to its text decoder, so this file's other values would be ignored.
        generation = copy.deepcopy(self.blip.generation_config)
        generation.max_length = min(inspect.signature(self.generate).parameters["max_length"].default,
                                    self.blip.config.text_config.max_position_embeddings)
        generation.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        size = self.blip.config.vision_config.image_size
        BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out)
        return out
