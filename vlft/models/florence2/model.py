"""Florence-2 (``florence2``): one sequence-to-sequence model for captioning, detection,
grounding and OCR, prompted by task tokens.

Paper: Xiao et al., "Florence-2: Advancing a Unified Representation for a Variety of
Vision Tasks", CVPR 2024. Reference code: the ``microsoft/Florence-2-*`` remote code.
Built on transformers' native ``Florence2ForConditionalGeneration`` (DaViT vision tower,
``multi_modal_projector``, BART encoder-decoder); no ``trust_remote_code``.

Weights: a HF id or local directory in transformers' layout (``florence-community/
Florence-2-{base,large}[-ft]``), an original ``microsoft/Florence-2-*`` checkpoint (a
directory with its ``config.json`` or a weights file; keys renamed by
``vlft.models.convert.florence2``), or a vlft checkpoint (``finetuned``).

The model registers the transformers model's own children (``model``, ``lm_head``) under
their own names, so vlft checkpoints, ``run.lr_multipliers`` patterns and peft adapters
use transformers' key names: an adapter saved by a vlft run loads with plain
``PeftModel.from_pretrained(Florence2ForConditionalGeneration.from_pretrained(base), dir)``.

Inputs: ``samples["image"]`` (normalised pixels), ``samples["text_input"]`` and, for
prompted data, ``samples["text_output"]``: the encoder reads ``<image>`` x N, ``<s>``, the
prompt's sentence (``vlft.processors.florence2.construct_prompt``), ``</s>``, where
N = (H/32)(W/32) + 1 image features; the decoder learns ``<s> target </s>`` (padding
excluded from the loss). Without ``text_output`` (caption data), ``text_input`` is the
target and ``prompt`` (default ``<CAPTION>``) the prompt.

Box scores (Florence-2 emits none): the score of a predicted box is the geometric mean of
the model's probabilities of the tokens that made it (its label's tokens and its four
location tokens), from one teacher-forced pass over the generated sequence with the raw
logits (no decoding penalties), so boxes rank by how sure the model was of them.
"""
from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common.registry import registry
from vlft.models.base_model import BaseModel
from vlft.models.florence2.tokenizer import load_tokenizer
from vlft.processors.florence2 import IMAGENET_MEAN, IMAGENET_STD, clean_text, construct_prompt, parse_boxes

logger = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_LOC_PREFIX = "<loc_"


def build_config(cfg: Mapping[str, Any], tokenizer):
    """A ``Florence2Config`` from the ``model:`` section's ``text_config`` (BART) and
    ``vision_config`` (DaViT); token ids follow the tokenizer (BART's: bos 0, pad 1,
    eos 2, decoding starts from eos)."""
    from transformers import Florence2Config

    text = _plain(cfg.get("text_config"))
    text.setdefault("vocab_size", len(tokenizer))
    text.update(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    text.setdefault("decoder_start_token_id", tokenizer.eos_token_id)
    text.setdefault("forced_eos_token_id", tokenizer.eos_token_id)
    vision = _plain(cfg.get("vision_config"))
    if vision.get("projection_dim", text.get("d_model")) != text.get("d_model", 1024):
        raise ValueError(f"florence2: vision_config.projection_dim ({vision.get('projection_dim')}) must equal "
                         f"text_config.d_model ({text.get('d_model')}): the projector feeds BART's encoder")
    return Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)


def init_loc_embeddings(hf_model: nn.Module, tokenizer) -> None:
    """Start ``<loc_0>`` .. ``<loc_999>`` as sinusoids of their bin (scaled to the table's
    init std), so that neighbouring bins start close: a model trained from scratch then
    learns coordinates far sooner. Only for models built from a config (``loc_init``)."""
    table = hf_model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(1000)])
    dim = table.shape[1]
    pos = torch.arange(1000, dtype=torch.float32)[:, None]
    freq = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float32) * (torch.log(torch.tensor(1000.0)) / dim))
    waves = torch.zeros(1000, dim)
    waves[:, 0::2], waves[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)[:, : dim // 2]
    with torch.no_grad():
        table[ids] = waves * (table.std() / waves.std())


def _plain(section: Any) -> Dict[str, Any]:
    """A config section as plain Python values (transformers' strict configs refuse OmegaConf lists)."""
    from omegaconf import DictConfig, OmegaConf

    return dict(OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section or {})


def _train_frozen(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


@registry.register_model("florence2")
class Florence2(BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": "configs/models/florence2/base.yaml",
        "large": "configs/models/florence2/large.yaml",
        "base_ft": "configs/models/florence2/base_ft.yaml",
        "large_ft": "configs/models/florence2/large_ft.yaml",
        "tiny": "configs/models/florence2/tiny.yaml",
    }
    CONFIG_KEYS = ("trust_remote_code",)  # beyond the default YAMLs (vlft.common.validate_model)
    HF_SUB_CONFIGS = {"vision_config": "Florence2VisionConfig", "text_config": "auto:bart"}
    POSITION_LIMITS = {"max_txt_len": "text_config"}

    def __init__(self, hf_model: nn.Module, tokenizer, prompt: str = "<CAPTION>", max_txt_len: int = 1024,
                 image_size: int = 768):
        super().__init__()
        # the HF model is held outside the module tree; its children are registered under their own names
        object.__setattr__(self, "_hf", hf_model)
        self.model = hf_model.model
        self.lm_head = hf_model.lm_head
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_txt_len = int(max_txt_len)
        self.image_size = int(image_size)  # the processors' square input size (for save_hf's processor)
        self.image_token_id = int(hf_model.config.image_token_id)
        vocab = tokenizer.get_vocab()
        self._loc_ids = {vocab[f"{_LOC_PREFIX}{i}>"] for i in range(1000) if f"{_LOC_PREFIX}{i}>" in vocab}

    @property
    def hf(self) -> nn.Module:
        """The transformers model, with whatever peft put in place of its children."""
        hf = self.__dict__["_hf"]
        if hf.model is not self.model:
            hf.model = self.model
        if hf.lm_head is not self.lm_head:
            hf.lm_head = self.lm_head
        return hf

    def train(self, mode: bool = True) -> "Florence2":
        super().train(mode)
        self.__dict__["_hf"].training = mode  # its children follow through this module; its own flag too
        return self

    @property
    def config(self):
        return self.__dict__["_hf"].config

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Florence2":
        from transformers import Florence2ForConditionalGeneration

        from vlft.models.convert.florence2 import is_original_source, load_original

        if cfg.get("trust_remote_code"):
            raise ValueError("florence2 runs transformers' native Florence-2 classes; trust_remote_code is not used "
                             "(original microsoft/Florence-2 checkpoints load through vlft's key map)")
        source = str(cfg["pretrained"]) if cfg.get("load_pretrained", False) and cfg.get("pretrained") else None
        original = bool(source) and (cfg.get("checkpoint_format") == "original" or
                                     (cfg.get("checkpoint_format", "auto") == "auto" and is_original_source(source)))
        tokenizer = load_tokenizer(str(cfg.get("tokenizer") or source or "tiny"))
        if original:
            hf, report = load_original(source, tokenizer)
            logger.info("florence2: original checkpoint %s: %s", source, report.summary())
        elif source:
            hf = Florence2ForConditionalGeneration.from_pretrained(source)
        else:
            hf = Florence2ForConditionalGeneration(build_config(cfg, tokenizer))
            if cfg.get("loc_init") == "sinusoidal":
                init_loc_embeddings(hf, tokenizer)
        if hf.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ValueError(f"florence2: the tokenizer has {len(tokenizer)} tokens but the model's embedding only "
                             f"{hf.get_input_embeddings().num_embeddings}; use the checkpoint's own tokenizer")
        model = cls(hf, tokenizer, prompt=cfg.get("prompt", "<CAPTION>"), max_txt_len=cfg.get("max_txt_len", 1024),
                    image_size=cfg.get("image_size", 768))
        model.configure_training(cfg)
        if cfg.get("load_finetuned", False) and cfg.get("finetuned"):
            model.load_checkpoint(cfg["finetuned"])
        return model

    def configure_training(self, cfg: Mapping[str, Any]) -> None:
        """``freeze_vision`` / ``freeze_projector`` / ``freeze_language`` (each part held in
        ``vision_precision`` / ``language_precision`` when frozen, running in its own
        dtype under any autocast, as BLIP-2's frozen parts) and ``use_grad_checkpoint``."""
        parts = {"vision": [self.model.vision_tower], "projector": [self.model.multi_modal_projector],
                 "language": [self.model.language_model, self.lm_head]}
        for part, modules in parts.items():
            precision = str(cfg.get(f"{part}_precision", "fp32"))
            if precision not in _DTYPES:
                raise ValueError(f"florence2: {part}_precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
            if not cfg.get(f"freeze_{part}", False):
                if precision != "fp32":
                    logger.warning("florence2: %s_precision=%s ignored: a trained part stays fp32 (use run.amp)", part, precision)
                continue
            for module in modules:
                module.requires_grad_(False)
                module.train = functools.partial(_train_frozen, module)  # frozen parts stay in eval mode
                module.eval()
                if precision != "fp32":
                    from vlft.models.eva_vit import hold_own_precision

                    module.to(_DTYPES[precision])
                    hold_own_precision(module)
            logger.info("florence2: %s frozen (%s)", part, precision)
        if cfg.get("use_grad_checkpoint", False):
            enable = getattr(self.hf, "activation_checkpointing_enable", None) or self.hf.gradient_checkpointing_enable
            key = "activation_checkpointing_kwargs" if enable.__name__.startswith("activation") else "gradient_checkpointing_kwargs"
            enable(**{key: {"use_reentrant": False}})

    def load_checkpoint(self, path):
        """A vlft checkpoint (transformers' key names) or an original Florence-2 weights file."""
        from vlft.models.convert.florence2 import convert_original_state, looks_original
        from vlft.runners.checkpoint import load_model_weights, read

        raw = read(path) if not isinstance(path, Mapping) else path
        state = raw.get("model", raw)
        if looks_original(state):
            converted, report = convert_original_state(state, self.hf)
            logger.info("florence2: original checkpoint %s: %s", path, report.summary())
            return report.missing, report.unexpected
        return load_model_weights(self, raw)

    def resolve_lora_targets(self, targets: Sequence[str]) -> str:
        """``model.peft.target_modules`` (presets, module names, regexes) as one peft regex."""
        import re

        from vlft.models.florence2.lora import resolve_targets

        regex = resolve_targets(self, targets)
        shared = self.model.language_model.get_input_embeddings()
        if re.fullmatch(regex, "lm_head") and self.lm_head.weight is shared.weight:
            # LoRA on the tied output layer must not reach the input embeddings once merged:
            # the output layer gets its own copy of the table (same values: the same logits)
            self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach().clone(), requires_grad=False)
            self.config.tie_word_embeddings = False
            logger.info("florence2: lm_head untied from the input embeddings for LoRA (merged exports stay exact)")
        return regex

    def peft_parts(self) -> List[Any]:
        """The model keeps transformers' names: its adapter is ``Florence2ForConditionalGeneration``'s."""
        from vlft.models.peft_export import PeftPart

        hf = self.__dict__["_hf"]
        return [PeftPart("adapter", "", type(hf), source=str(getattr(hf, "name_or_path", "") or ""))]

    # ------------------------------------------------------------------ inputs
    def num_image_tokens(self, height: int, width: int) -> int:
        """Image features the projector makes for an image: the last stage's grid + 1."""
        v = self.config.vision_config
        for k, s, p in zip(v.patch_size, v.patch_stride, v.patch_padding):
            height, width = (height + 2 * p - k) // s + 1, (width + 2 * p - k) // s + 1
        return height * width + 1

    def encoder_inputs(self, image: torch.Tensor, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask``: image placeholders, then ``<s> sentence </s>``."""
        tok = self.tokenizer
        texts = [tok.bos_token + construct_prompt(p) + tok.eos_token for p in prompts]
        enc = tok(texts, add_special_tokens=False, padding="longest", truncation=True, max_length=self.max_txt_len,
                  padding_side="right", return_tensors="pt")
        n = self.num_image_tokens(*image.shape[-2:])
        ids = torch.cat([torch.full((len(texts), n), self.image_token_id, dtype=torch.long), enc.input_ids], 1)
        mask = torch.cat([torch.ones(len(texts), n, dtype=torch.long), enc.attention_mask], 1)
        return {"input_ids": ids.to(image.device), "attention_mask": mask.to(image.device)}

    def target_ids(self, targets: Sequence[str], device) -> torch.Tensor:
        """``<s> target </s>`` ids, padding as -100."""
        enc = self.tokenizer(list(targets), padding="longest", truncation=True, max_length=self.max_txt_len,
                             padding_side="right", return_tensors="pt")
        return enc.input_ids.masked_fill(enc.attention_mask == 0, -100).to(device)

    def prompts_targets(self, samples: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
        if samples.get("text_output") is not None:
            return list(samples["text_input"]), list(samples["text_output"])
        targets = list(samples["text_input"])
        return [self.prompt] * len(targets), targets

    # ------------------------------------------------------------------ training
    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        image = samples["image"]
        prompts, targets = self.prompts_targets(samples)
        out = self.hf(pixel_values=image, **self.encoder_inputs(image, prompts), labels=self.target_ids(targets, image.device))
        return {"loss": out.loss}

    # ------------------------------------------------------------------ inference
    def _prompts(self, samples: Mapping[str, Any], prompt: Optional[str]) -> List[str]:
        n = samples["image"].shape[0]
        if prompt is not None:
            return [prompt] * n
        if samples.get("prompt") is not None:
            return list(samples["prompt"])
        if samples.get("text_output") is not None:  # prompted training data: text_input is the prompt
            return list(samples["text_input"])
        return [self.prompt] * n

    def _decoding(self, num_beams: int, max_length: int, min_length: int, use_nucleus_sampling: bool, top_p: float,
                  repetition_penalty: float, length_penalty: float, num_captions: int) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(max_new_tokens=max_length, min_new_tokens=min_length, num_return_sequences=num_captions,
                                   repetition_penalty=repetition_penalty)
        if use_nucleus_sampling:
            out.update(do_sample=True, top_p=top_p, num_beams=1)
        else:
            out.update(do_sample=False, num_beams=max(num_beams, num_captions), length_penalty=length_penalty)
        return out

    @torch.no_grad()
    def generate_ids(self, samples: Mapping[str, Any], prompts: Sequence[str], **decoding) -> Tuple[torch.Tensor, Dict]:
        image = samples["image"]
        inputs = self.encoder_inputs(image, prompts)
        limit = int(self.config.text_config.max_position_embeddings) - 1  # the decoder has no positions beyond
        if decoding.get("max_new_tokens", 0) > limit:
            decoding["max_new_tokens"] = limit
        decoding["min_new_tokens"] = min(decoding.get("min_new_tokens") or 0, decoding.get("max_new_tokens", limit))
        seqs = self.hf.generate(pixel_values=image, **inputs, pad_token_id=self.tokenizer.pad_token_id,
                                eos_token_id=self.tokenizer.eos_token_id,
                                decoder_start_token_id=self.config.text_config.decoder_start_token_id, **decoding)
        return seqs, inputs

    def decode(self, ids: torch.Tensor) -> List[str]:
        """Generated ids as text, loc tokens kept (they are special tokens), BART's specials removed."""
        return [clean_text(t) for t in self.tokenizer.batch_decode(ids, skip_special_tokens=False)]

    @torch.no_grad()
    def generate(self, samples: Mapping[str, Any], use_nucleus_sampling: bool = False, num_beams: int = 3,
                 max_length: int = 1024, min_length: int = 1, top_p: float = 0.9, repetition_penalty: float = 1.0,
                 length_penalty: float = 1.0, num_captions: int = 1, prompt: Optional[str] = None) -> List[str]:
        """Text for each image (``max_length`` / ``min_length`` count new tokens). The prompt
        is ``prompt``, else the batch's ``prompt`` (evaluation items of prompted data), else
        its ``text_input`` when it has ``text_output`` (prompted training items), else the
        model's own (caption data)."""
        decoding = self._decoding(num_beams, max_length, min_length, use_nucleus_sampling, top_p, repetition_penalty,
                                  length_penalty, num_captions)
        seqs, _ = self.generate_ids(samples, self._prompts(samples, prompt), **decoding)
        return self.decode(seqs)

    @torch.no_grad()
    def token_logprobs(self, image: torch.Tensor, inputs: Mapping[str, torch.Tensor], seqs: torch.Tensor) -> torch.Tensor:
        """[B, T-1] log-probabilities of ``seqs[:, 1:]`` under the raw logits (teacher forcing)."""
        logits = self.hf(pixel_values=image, **inputs, decoder_input_ids=seqs[:, :-1]).logits.float()
        return F.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None]).squeeze(-1)

    def pieces(self, ids: Sequence[int]) -> List[str]:
        """One piece of text per token (loc tokens as ``<loc_N>``, BART's specials empty)."""
        tok = self.tokenizer
        specials = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
        out = []
        for i in ids:
            if i in specials:
                out.append("")
            elif i in self._loc_ids:
                out.append(tok.convert_ids_to_tokens(i))
            else:
                out.append(tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)]))
        return out

    @torch.no_grad()
    def predict(self, samples: Mapping[str, Any], num_beams: int = 3, max_length: int = 1024, min_length: int = 1,
                repetition_penalty: float = 1.0, length_penalty: float = 1.0, prompt: Optional[str] = None) -> List[Dict[str, Any]]:
        """Boxes for each image: ``{"text", "bboxes" (x0, y0, x1, y1 in the original image's
        pixels: ``samples["orig_size"]`` (width, height), else the input's), "labels",
        "scores" (see the module docstring), "malformed"}``."""
        seqs, inputs = self.generate_ids(samples, self._prompts(samples, prompt),
                                         **self._decoding(num_beams, max_length, min_length, False, 1.0,
                                                          repetition_penalty, length_penalty, 1))
        return self.read_boxes(samples, inputs, seqs)

    @torch.no_grad()
    def read_boxes(self, samples: Mapping[str, Any], inputs: Mapping[str, torch.Tensor],
                   seqs: torch.Tensor) -> List[Dict[str, Any]]:
        """Boxes, labels and scores of generated sequences ``seqs`` (decoder start first)."""
        image = samples["image"]
        logp = self.token_logprobs(image, inputs, seqs).cpu()
        sizes = samples.get("orig_size")
        texts = self.decode(seqs)
        out = []
        for b, row in enumerate(seqs[:, 1:].tolist()):
            size = tuple(float(v) for v in sizes[b]) if sizes is not None else (image.shape[-1], image.shape[-2])
            parsed = parse_boxes(self.pieces(row), size)
            scores = [float(logp[b, idx].mean().exp()) for idx in parsed.pieces]
            out.append({"text": texts[b], "bboxes": parsed.boxes, "labels": parsed.labels, "scores": scores,
                        "malformed": dict(parsed.malformed)})
        return out

    # ------------------------------------------------------------------ export
    def processor(self, image_size: Optional[int] = None):
        """A transformers ``Florence2Processor`` for this model (``image_size`` square inputs)."""
        from transformers import CLIPImageProcessor, Florence2Processor

        size = int(image_size or self.image_size)
        image_processor = CLIPImageProcessor(do_resize=True, size={"height": size, "width": size}, resample=3,
                                             do_center_crop=False, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD))
        image_processor.image_seq_length = self.num_image_tokens(size, size)
        parse = {k: {} for k in ("pure_text", "description_with_bboxes", "description_with_polygons", "polygons",
                                 "bboxes", "description_with_bboxes_or_polygons")}
        parse.update(ocr={"area_threshold": 0.0}, phrase_grounding={"banned_grounding_tokens": []})
        return Florence2Processor(image_processor=image_processor, tokenizer=self.tokenizer, post_processor_config=parse)

    def save_hf(self, out_dir: str) -> Path:
        """``Florence2ForConditionalGeneration`` + ``Florence2Processor`` (``AutoProcessor``)."""
        out = Path(out_dir)
        hf = self.hf
        generation = copy.deepcopy(hf.generation_config)
        generation.max_length = int(self.config.text_config.max_position_embeddings)
        hf.save_pretrained(out)
        generation.save_pretrained(out)
        self.processor().save_pretrained(out)
        return out
