"""``minigpt4qwen``: BLIP-2's frozen vision side, a trained projection and a chat LLM.

Reference: Coobiw/MiniGPT4Qwen (now MPP-LLaVA), after MiniGPT-4 (Zhu et al., 2023)
and BLIP-2 (Li et al., ICML 2023). The pipeline: EVA ViT-g (``vit_model: eva_clip_g``,
frozen, ``vit_precision``) -> ``ln_vision`` -> the BLIP-2 Q-Former without text input
(``num_query_token`` learned queries; starts from LAVIS's BLIP-2 checkpoint) -> ``llm_proj``
(one Linear, the part that trains by default) -> a chat LLM (``llm_model``: a HF id or
directory through ``AutoModelForCausalLM``; Qwen-7B-Chat in the reference, Qwen2.5 /
Qwen3 instruct, or any LLM with a chat template). Each image's projected queries replace
the embeddings of its ``num_query_token`` image tokens in the conversation (see
``vlft.processors.chat``), with ``masked_scatter`` in the order the images come.

Modules are named so that the existing LAVIS BLIP-2 key map applies with an empty
prefix: ``vision_model`` (transformers' ``Blip2VisionModel``; its ``post_layernorm`` is
LAVIS's ``ln_vision``), ``query_tokens``, ``qformer`` (``Blip2QFormerModel``), then
``llm_proj`` and ``llm_model`` as the reference names them, so its released ``.pth``
files load as they are (``vlft.models.convert.minigpt4qwen``).

Freezing (the reference's keys and defaults): ``freeze_vit``, ``freeze_qformer`` (also
``ln_vision``: the reference trains only the projection), ``freeze_queries``,
``freeze_proj`` (default false), ``freeze_llm``. A frozen ViT / Q-Former stays in eval
mode (no dropout), as the reference's ``disabled_train``. The frozen ViT and LLM are
held in ``vit_precision`` / ``llm_precision``. ``get_lora`` (``lora_r``, ``lora_alpha``,
``lora_dropout``, ``lora_target_modules``) wraps the LLM with peft through the same
``apply_peft`` as the generic ``model.peft``, as the reference wraps ``llm_model``, so
LoRA keys keep the reference's names; ``model.peft`` on the whole model works too.
``llm_grad_checkpoint`` turns on the LLM's gradient checkpointing. Batches are padded to
their longest conversation (``padding: max_length`` pads to ``max_txt_len`` as the
reference does; same loss, more compute: ``benchmarks/instruction_train.py``). The loss
projects only the labelled positions onto the vocabulary (``loss_logits: labelled``, the
default; ``all`` runs the LLM's own ``forward(labels=...)``; same loss within fp32
rounding, see ``vlft.models.lm_loss``).

Samples: ``conversation`` (a list of messages per sample), ``image`` (every image of the
batch, ``[N, 3, H, W]``, sample after sample, or ``None``) and ``n_images``; or the
``text_input`` (+ ``text_output`` / ``answers``) of captioning and VQA data, turned into a
one-turn conversation with ``caption_prompt`` / ``vqa_prompt``.
"""
from __future__ import annotations

import difflib
import functools
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from vlft.common.registry import registry
from vlft.common.validate_common import ConfigError
from vlft.models.base_model import BaseModel
from vlft.models.lm_loss import causal_lm_loss, check_loss_logits
from vlft.models.minigpt4qwen.generation import GenerationMixin
from vlft.processors.chat import IMAGE_MARK, ChatEncoder, pad_batch

logger = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: every ``model:`` key this model reads (the reference's, then vlft's)
MODEL_KEYS = {
    "arch", "model_type", "load_pretrained", "pretrained", "load_finetuned", "finetuned",
    "vit_model", "img_size", "image_size", "drop_path_rate", "use_grad_checkpoint", "vit_precision", "freeze_vit",
    "num_query_token", "freeze_qformer", "freeze_queries", "freeze_proj", "llm_model", "max_txt_len", "freeze_llm",
    "get_lora", "lora_r", "lora_alpha", "lora_dropout", "prompt",
    "vit_pretrained", "vision_config", "qformer_config", "cross_attention_freq", "llm_config", "llm_tokenizer",
    "llm_precision", "trust_remote_code", "image_token", "pad_token", "system_message", "label_style", "chat_template",
    "lora_target_modules", "llm_grad_checkpoint", "caption_prompt", "vqa_prompt", "padding",
    "export_merge_lora", "unfreeze_pos_embed", "qformer_text_input", "loss_logits",
    "freeze", "unfreeze", "peft",  # the generic fine-tuning keys (vlft.models.adapters)
}


def _train_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def keep_eval(module: nn.Module) -> None:
    """``module.train()`` stays eval (the reference's ``disabled_train`` for frozen parts)."""
    module.train = functools.partial(_train_frozen, module)
    module.eval()


@registry.register_model("minigpt4qwen")
class MiniGPT4Qwen(GenerationMixin, BaseModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "qwen7b_chat": "configs/models/minigpt4qwen/qwen7b_chat.yaml",
        "qwen14b_chat": "configs/models/minigpt4qwen/qwen14b_chat.yaml",
        "qwen2.5_7b_instruct": "configs/models/minigpt4qwen/qwen2.5_7b_instruct.yaml",
        "qwen2.5_3b_instruct": "configs/models/minigpt4qwen/qwen2.5_3b_instruct.yaml",
        "qwen3_8b": "configs/models/minigpt4qwen/qwen3_8b.yaml",
        "tiny": "configs/models/minigpt4qwen/tiny.yaml",
    }
    CONFIG_KEYS = tuple(sorted(MODEL_KEYS))  # checked before anything loads (vlft.common.validate_model)
    #: the loss projects only the labelled positions onto the vocabulary (vlft.models.lm_loss)
    loss_logits = "labelled"
    HF_SUB_CONFIGS = {"vision_config": "Blip2VisionConfig", "qformer_config": "Blip2QFormerConfig",
                      "llm_config": "auto:qwen2"}
    POSITION_LIMITS = {"max_txt_len": "llm_config"}

    def __init__(self, vision_model: nn.Module, qformer: nn.Module, query_tokens: nn.Parameter, llm_model: nn.Module,
                 tokenizer, chat: ChatEncoder, pad_id: int, caption_prompt: str, vqa_prompt: str,
                 padding: str = "longest"):
        super().__init__()
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.padding = padding
        self.vision_model, self.qformer, self.query_tokens = vision_model, qformer, query_tokens
        self.llm_proj = nn.Linear(qformer.config.hidden_size, llm_model.get_input_embeddings().embedding_dim)
        self.llm_model = llm_model
        self.tokenizer, self.chat_encoder, self.pad_id = tokenizer, chat, pad_id
        self.caption_prompt, self.vqa_prompt = caption_prompt, vqa_prompt

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "MiniGPT4Qwen":
        from transformers import Blip2QFormerModel, Blip2VisionModel

        from vlft.models.blip2.blip2_base import build_qformer_config
        from vlft.models.minigpt4qwen.tokenizer import load_tokenizer, pad_token_id

        unknown = sorted(set(cfg) - MODEL_KEYS)
        if unknown:
            hint = difflib.get_close_matches(unknown[0], sorted(MODEL_KEYS), n=3)
            raise ConfigError(f"minigpt4qwen: unknown model key {unknown[0]!r}" + (f"; did you mean {hint}?" if hint else "")
                             + f" (known keys: {', '.join(sorted(MODEL_KEYS))})")
        if cfg.get("qformer_text_input", False):  # the reference raises NotImplementedError too
            raise ConfigError("model.qformer_text_input: true is not supported; the Q-Former sees only the "
                             "image (the reference's YAMLs all set false)")
        if float(cfg.get("drop_path_rate") or 0) > 0:
            logger.warning("drop_path_rate=%s ignored: the frozen EVA ViT runs without stochastic depth",
                           cfg.get("drop_path_rate"))
        remote = bool(cfg.get("trust_remote_code", False))
        image_token = str(cfg.get("image_token", "<|image_pad|>"))
        tokenizer = load_tokenizer(str(cfg.get("llm_tokenizer") or cfg.get("llm_model")), image_token, remote,
                                   cfg.get("pad_token"))
        image_size = cfg.get("image_size", cfg.get("img_size", 224))
        blip2_cfg = build_qformer_config({**cfg, "image_size": image_size}, None, text_input=False)
        vision_model = Blip2VisionModel(blip2_cfg.vision_config)
        qformer = Blip2QFormerModel(blip2_cfg.qformer_config)
        query_tokens = nn.Parameter(torch.zeros(1, blip2_cfg.num_query_tokens, qformer.config.hidden_size))
        nn.init.normal_(query_tokens, 0.0, qformer.config.initializer_range)  # LAVIS's (transformers' is zeros)
        llm = cls.build_llm(cfg, tokenizer, remote)
        chat = ChatEncoder(tokenizer, blip2_cfg.num_query_tokens, image_token,
                           system_message=cfg.get("system_message", "You are a helpful assistant."),
                           label_style=str(cfg.get("label_style", "assistant")),
                           max_txt_len=int(cfg.get("max_txt_len", 512)), chat_template=cfg.get("chat_template"))
        model = cls(vision_model, qformer, query_tokens, llm, tokenizer, chat, pad_token_id(tokenizer),
                    caption_prompt=cfg.get("caption_prompt", f"<Img>{IMAGE_MARK}</Img> Describe this image in a few words."),
                    vqa_prompt=cfg.get("vqa_prompt", f"<Img>{IMAGE_MARK}</Img> {{}}"),
                    padding=str(cfg.get("padding", "longest")))
        model.loss_logits = check_loss_logits(cfg.get("loss_logits"))
        model.config_section = _plain(cfg)
        model.load_weights(cfg, "pretrained")
        if cfg.get("get_lora", False):  # before `finetuned`, which may hold the reference's LoRA weights
            model.add_lora(cfg)
        model.load_weights(cfg, "finetuned")
        model.setup_training(cfg)
        return model

    @staticmethod
    def build_llm(cfg: Mapping[str, Any], tokenizer, remote: bool) -> nn.Module:
        """``llm_config`` (a config dict: a model built at random, e.g. the tiny Qwen2) or
        ``llm_model`` (a HF id / directory, loaded in ``llm_precision`` when frozen)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        if cfg.get("llm_config"):
            llm_cfg = dict(cfg["llm_config"])
            llm_cfg.setdefault("vocab_size", len(tokenizer))
            llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**llm_cfg), trust_remote_code=remote)
        else:
            # a frozen LLM loads straight in its precision (a 7B model in fp32 would need 28 GB first)
            precision = str(cfg.get("llm_precision", "fp32")) if cfg.get("freeze_llm", True) else "fp32"
            llm = AutoModelForCausalLM.from_pretrained(str(cfg["llm_model"]), trust_remote_code=remote,
                                                       dtype=_DTYPES.get(precision, torch.float32))
        rows = llm.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:  # the image token was added to the vocabulary
            llm.resize_token_embeddings(len(tokenizer))
        return llm

    def load_weights(self, cfg: Mapping[str, Any], which: str) -> None:
        """``which="pretrained"``: ``vit_pretrained`` (EVA's ``eva_vit_g.pth``), then
        ``pretrained`` (LAVIS's BLIP-2 checkpoint: Q-Former, queries, ``ln_vision``, ViT);
        ``"finetuned"``: a released MiniGPT4Qwen ``.pth`` or a vlft checkpoint. Each loads
        on top of the current weights, when its ``load_*`` flag is set."""
        from vlft.common.utils import resolve_data_path
        from vlft.models.convert import lavis_blip2

        if which == "pretrained" and cfg.get("vit_pretrained"):
            lavis_blip2.load_eva_vit(self.vision_model, str(resolve_data_path(cfg["vit_pretrained"])))
        if cfg.get(f"load_{which}", False) and cfg.get(which):
            self.load_checkpoint(str(resolve_data_path(cfg[which])))

    def add_lora(self, cfg: Mapping[str, Any]) -> None:
        """The reference's ``get_lora``: peft LoRA on ``llm_model`` (``apply_peft``, the code
        behind the generic ``model.peft``), so its keys keep the reference's names."""
        if cfg.get("peft"):
            raise ValueError("model.get_lora and model.peft both ask for LoRA; keep one")
        from vlft.models.adapters import apply_peft

        self.llm_model = apply_peft(self.llm_model, {
            "method": "lora", "r": cfg.get("lora_r", 8), "alpha": cfg.get("lora_alpha", 32),
            "dropout": cfg.get("lora_dropout", 0.05),
            "target_modules": list(cfg.get("lora_target_modules") or ["q_proj", "v_proj"])})

    def setup_training(self, cfg: Mapping[str, Any]) -> None:
        """Freezing, precisions and checkpointing as the ``model:`` section says."""
        from vlft.models.eva_vit import hold_own_precision, prepare_vision_encoder

        prepare_vision_encoder(self.vision_model, freeze_vit=bool(cfg.get("freeze_vit", True)),
                               vit_precision=str(cfg.get("vit_precision", "fp16")),
                               use_grad_checkpoint=bool(cfg.get("use_grad_checkpoint", False)))
        if cfg.get("unfreeze_pos_embed", False) and cfg.get("freeze_vit", True):
            # the reference's option: the frozen ViT's position embedding trains (kept in fp32,
            # the embeddings cast it to the ViT's dtype when adding it)
            pos = self.vision_model.embeddings.position_embedding
            pos.data = pos.data.float()
            pos.requires_grad_(True)
        if cfg.get("freeze_qformer", True):
            self.qformer.requires_grad_(False)
            self.vision_model.post_layernorm.requires_grad_(False)  # ln_vision: only llm_proj trains
            keep_eval(self.qformer)
        if cfg.get("freeze_queries", True):
            self.query_tokens.requires_grad_(False)
        if cfg.get("freeze_proj", False):
            self.llm_proj.requires_grad_(False)
        if cfg.get("freeze_llm", True):
            precision = str(cfg.get("llm_precision", "fp32"))
            if precision not in _DTYPES:
                raise ValueError(f"llm_precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
            for name, param in self.llm_model.named_parameters():
                if "lora_" not in name:  # LoRA weights (get_lora) train, in fp32
                    param.requires_grad_(False)
                    param.data = param.data.to(_DTYPES[precision])
            if precision != "fp32":
                hold_own_precision(self.llm_model)
        if cfg.get("llm_grad_checkpoint", False):
            if hasattr(self.llm_model, "activation_checkpointing_enable"):  # transformers 5's name
                self.llm_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.llm_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def no_weight_decay(self) -> set:
        return {"query_tokens"}

    # ------------------------------------------------------------------ inputs
    def encode_images(self, image: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> the projected queries ``[N, num_query_token, llm hidden]``."""
        vit = self.vision_model(pixel_values=image).last_hidden_state
        queries = self.query_tokens.expand(vit.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=vit,
                           encoder_attention_mask=torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device))
        return self.llm_proj(out.last_hidden_state)

    def embed(self, input_ids: torch.Tensor, image: Optional[torch.Tensor],
              queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The LLM's input embeddings with the image tokens' rows replaced by the projected
        queries of ``image`` (or ``queries``, already projected), in the LLM's dtype (built
        outside autocast, which would mix dtypes)."""
        if queries is None and image is not None and image.shape[0]:
            queries = self.encode_images(image)
        with torch.autocast(device_type=input_ids.device.type, enabled=False):
            embeds = self.llm_model.get_input_embeddings()(input_ids)
            slots = input_ids == self.chat_encoder.image_token_id
            n_slots = int(slots.sum())
            n_queries = 0 if queries is None else queries.shape[0] * queries.shape[1]
            if n_slots != n_queries:
                raise ValueError(f"{n_slots} image tokens in the batch but {n_queries} query embeddings")
            if queries is not None:
                embeds = embeds.masked_scatter(slots[..., None], queries.to(embeds.dtype))
        return embeds

    def conversations(self, samples: Mapping[str, Any], with_answer: bool = True) -> List[List[Dict[str, str]]]:
        """The batch's conversations: its own, or built from ``text_input`` (captions, or
        questions with ``text_output`` / the best of ``answers``)."""
        if samples.get("conversation") is not None:
            return [list(c) for c in samples["conversation"]]
        texts = list(samples["text_input"])
        answers = samples.get("text_output")
        if answers is None and samples.get("answers") is not None:
            answers = best_answers(samples["answers"], samples["weights"], samples["n_answers"])
        if answers is None:  # captions: the caption instruction, the caption as the answer
            return [[{"role": "user", "content": self.caption_prompt}] + ([{"role": "assistant", "content": t}]
                                                                          if with_answer else []) for t in texts]
        return [[{"role": "user", "content": self.question_prompt(q)}] + ([{"role": "assistant", "content": a}]
                                                                         if with_answer else [])
                for q, a in zip(texts, answers)]

    def question_prompt(self, question: str, prompt: Optional[str] = None) -> str:
        prompt = prompt or self.vqa_prompt
        text = prompt.format(question) if "{}" in prompt else f"{prompt}{question}"
        return text if IMAGE_MARK in text else f"<Img>{IMAGE_MARK}</Img> {text}"

    @staticmethod
    def images_per_sample(samples: Mapping[str, Any], n: int) -> List[int]:
        if samples.get("n_images") is not None:
            return [int(k) for k in samples["n_images"]]
        image = samples.get("image")
        return [1] * n if image is not None else [0] * n

    def sample_ids(self, samples: Mapping[str, Any], n: int) -> List[Any]:
        for key in ("sample_id", "question_id", "instance_id", "image_id"):
            if samples.get(key) is not None:
                ids = samples[key]
                return [i.item() if hasattr(i, "item") else i for i in ids]
        return list(range(n))

    # ------------------------------------------------------------------ training
    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        convs = self.conversations(samples)
        counts = self.images_per_sample(samples, len(convs))
        ids = self.sample_ids(samples, len(convs))
        encoded = [self.chat_encoder.encode(c, k, sample=i) for c, k, i in zip(convs, counts, ids)]
        rows, labels = [e.input_ids for e in encoded], [e.labels for e in encoded]
        if self.padding == "max_length":  # the reference pads every sample to max_txt_len
            width = self.chat_encoder.max_txt_len
            labels = [lab + [-100] * (width - len(lab)) for lab in labels]
            rows = [r + [self.pad_id] * (width - len(r)) for r in rows]
        batch = pad_batch(rows, self.pad_id, "right", labels)
        if self.padding == "max_length":
            batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None]
                                       < torch.tensor([len(e.input_ids) for e in encoded])[:, None]).long()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        embeds = self.embed(batch["input_ids"], samples.get("image"))
        loss = causal_lm_loss(self.llm_model, embeds, batch["attention_mask"], batch["labels"], self.loss_logits)
        n_tokens = (batch["labels"][:, 1:] != -100).sum()
        return {"loss": loss, "n_label_tokens": n_tokens}

    # ------------------------------------------------------------------ weights
    def load_checkpoint(self, path):
        """A LAVIS BLIP-2 checkpoint, a released MiniGPT4Qwen ``.pth`` (both by key map,
        with a report of missing and unexpected keys) or a vlft checkpoint."""
        from vlft.models.convert.minigpt4qwen import is_reference_checkpoint, load_reference_checkpoint
        from vlft.runners.checkpoint import load_model_weights, read

        raw = path if isinstance(path, Mapping) else read(path)
        state = raw.get("model", raw) if isinstance(raw.get("model", None), Mapping) else raw
        if is_reference_checkpoint(state):
            report = load_reference_checkpoint(self, state, name=str(path) if not isinstance(path, Mapping) else "state")
            return report.missing, report.unexpected
        return load_model_weights(self, {"model": state})

    def peft_parts(self) -> List[Any]:
        """LoRA on export: ``adapter/`` for the LLM alone (``get_lora`` or ``model.peft``), onto
        ``AutoModelForCausalLM.from_pretrained(hf_base/llm)``; LoRA on the vision side has no
        transformers base written and stays in vlft's names (``adapter_vlft/``)."""
        from transformers import AutoModelForCausalLM

        from vlft.models.peft_export import PeftPart

        llm = self.llm_model.get_base_model() if hasattr(self.llm_model, "peft_config") else self.llm_model
        return [PeftPart("adapter", "llm_model", type(llm), base="hf_base/llm", base_class=AutoModelForCausalLM,
                         source=str(getattr(llm, "name_or_path", "") or ""))]

    def save_hf(self, out_dir: str, merge_lora: Optional[bool] = None):
        """See ``vlft.models.minigpt4qwen.export.save_hf``; ``merge_lora`` defaults to the
        ``export_merge_lora`` key (true: the exported LLM has the LoRA weights merged in)."""
        from vlft.models.minigpt4qwen.export import save_hf

        if merge_lora is None:
            merge_lora = bool(getattr(self, "config_section", {}).get("export_merge_lora", True))
        return save_hf(self, out_dir, merge_lora=merge_lora)


def _plain(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def best_answers(answers: Sequence[str], weights: torch.Tensor, n_answers: torch.Tensor) -> List[str]:
    """Each question's highest-weighted answer (VQA training data: flat answers, weights, counts)."""
    out, start = [], 0
    weights = [float(w) for w in weights]
    for n in [int(k) for k in n_answers]:
        part = weights[start:start + n]
        out.append(answers[start + part.index(max(part))])
        start += n
    return out
