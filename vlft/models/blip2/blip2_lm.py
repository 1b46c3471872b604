"""BLIP-2 stage 2: the Q-Former's queries as a soft prompt to a frozen language model
(``blip2_opt``, ``blip2_t5``).

Built on transformers' ``Blip2ForConditionalGeneration`` (attribute ``blip2``): its
ViT, query tokens, Q-Former, ``language_projection`` and ``language_model``. vlft
computes the language model's inputs itself, as LAVIS does, so training and decoding
need no image placeholder tokens; ``save_hf`` adds them for transformers' processor.

LAVIS semantics kept:

- Decoder-only (OPT): ``[queries; source + target + end]``, where ``end`` is "\\n" when
  the tokenizer has a token for it (LAVIS ends OPT captions with it and stops decoding
  there), else the eos token; the queries, the source and the padding are excluded from
  the loss. With an empty source (``prompt: ""``, LAVIS's stage-2 pre-training default)
  the tokenizer's BOS (OPT's ``</s>``) stays a target, predicted from the last query,
  as in LAVIS, which masks only the prompt and the padding (``bos_target: false`` leaves
  it out: generation always starts from it, so it need not be learned).
- Encoder-decoder (T5): the encoder reads ``[queries; source]``, the decoder learns the
  target (truncated at ``max_output_txt_len``, by default ``max_txt_len`` as LAVIS's
  ``blip2_t5`` truncates both).
- Source and target: captions (``text_input`` only) are learned after ``prompt`` (a
  caption that already starts with the prompt, as a ``blip_caption`` processor with a
  ``prompt`` makes it, is not prompted twice); question answering and instruction data
  (``text_output`` present) learn ``text_output`` after ``prompt.format(text_input)``.
- Generation as LAVIS 1.0.2 runs it (checked against it on the same weights): at most
  ``max_length`` new tokens (its ``max_new_tokens``); ``min_length`` counts what
  transformers 4.26 counted: for OPT the prompt's tokens (with BOS) too, for T5 the
  decoder's start token, so the default 1 lets the text end at once (an empty caption or
  answer) and an OPT prompt of 8 tokens makes ``min_length`` 8 no constraint. LAVIS's
  HEAD (OPT from ``inputs_embeds`` under transformers 4.33) counts a BOS placeholder
  instead: at most ``max_length - 1`` new tokens, at least ``min_length - 1``, whatever
  the prompt. Nucleus sampling: OPT samples one sequence per caption, T5 keeps its
  ``num_beams`` (transformers' beam sampling), as LAVIS. Texts are decoded as LAVIS's
  (:func:`~vlft.models.blip2.blip2_base.decode_texts`).
- What transformers 5 decodes differently from LAVIS's 4.26 (no option reproduces it):
  beam search divides a hypothesis' log-probability by ``len ** length_penalty`` where
  4.26 counted an OPT prompt's tokens in ``len`` and a hypothesis cut at ``max_length``
  one token longer, so captions can differ where a finished and a running beam are
  close (seen with ``length_penalty`` 2, or 1 with a prompt); beam sampling (T5 nucleus)
  draws its first tokens from one beam, 4.26 from ``num_beams`` copies of it.
- LAVIS's ``Blip2T5.forward`` never applies ``prompt`` (the encoder reads ``text_input``
  as it is; only ``predict_answers`` formats it); vlft formats ``text_input`` with the
  prompt in training too, so training and answering see the same input. With
  ``prompt: ""`` (LAVIS's T5 configs) both are the same.
- The frozen language model may be held in fp16 / bf16 (``llm_precision``); LoRA on it
  comes from the generic ``model.peft`` section (e.g. ``q_proj``/``v_proj`` for OPT,
  ``q``/``v`` for T5).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlft.models.blip2.blip2_base import (Blip2Base, build_qformer_config, decode_texts, hf_source, init_parts,
                                          init_query_tokens, load_pretrained_blip2, prepare_vit)
from vlft.models.generation_cache import beam_search_cache
from vlft.models.lm_loss import causal_lm_loss, check_loss_logits

logger = logging.getLogger(__name__)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_lm_tokenizer(name: str):
    """``shapes_opt`` / ``shapes_t5`` (the tiny models' word-level tokenizers) or a HF id / directory."""
    if name in ("shapes_opt", "shapes_t5"):
        from vlft.datasets.synthetic_shapes import shapes_lm_tokenizer

        return shapes_lm_tokenizer(name.split("_")[1])
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, use_fast=True)


class Blip2LM(Blip2Base):
    #: the ``model:`` key naming the language model (``opt_model`` / ``t5_model``)
    llm_key = ""
    CONFIG_KEYS = ("bos_target", "max_output_txt_len", "embed_dim", "loss_logits")  # beyond the default YAMLs
    #: OPT's loss projects only the labelled positions onto the vocabulary (vlft.models.lm_loss)
    loss_logits = "labelled"

    def __init__(self, blip2: nn.Module, tokenizer, prompt: str = "", max_txt_len: int = 32,
                 max_output_txt_len: Optional[int] = None, bos_target: bool = True):
        super().__init__()
        self.blip2 = blip2
        self.tokenizer = tokenizer
        self.prompt = prompt or ""
        self.max_txt_len = max_txt_len
        self.max_output_txt_len = max_txt_len if max_output_txt_len is None else max_output_txt_len
        self.bos_target = bos_target
        self.decoder_only = bool(blip2.config.use_decoder_only_language_model)
        newline = tokenizer("\n", add_special_tokens=False).input_ids
        self.end_text = "\n" if len(newline) == 1 and tokenizer.decode(newline) == "\n" else (tokenizer.eos_token or "")
        self.end_id = newline[0] if self.end_text == "\n" else tokenizer.eos_token_id

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]):
        from transformers import AutoConfig, Blip2ForConditionalGeneration

        source = hf_source(cfg)
        llm = cfg.get(cls.llm_key)
        tokenizer = load_lm_tokenizer(cfg.get("llm_tokenizer") or source or llm)
        remote = bool(cfg.get("trust_remote_code", False))
        if source:
            blip2 = Blip2ForConditionalGeneration.from_pretrained(source, trust_remote_code=remote)
        else:
            text_config = dict(cfg["text_config"]) if cfg.get("text_config") else \
                AutoConfig.from_pretrained(llm, trust_remote_code=remote).to_dict()
            config = build_qformer_config({**cfg, "text_config": text_config}, None, text_input=False)
            cls.configure_language_model(config.text_config, cfg)
            blip2 = Blip2ForConditionalGeneration(config)
            init_query_tokens(blip2)
            if llm and not cfg.get("text_config"):
                blip2.language_model = cls.load_language_model(llm, remote, cfg)
        model = cls(blip2, tokenizer, prompt=cfg.get("prompt", ""), max_txt_len=cfg.get("max_txt_len", 32),
                    max_output_txt_len=cfg.get("max_output_txt_len"), bos_target=bool(cfg.get("bos_target", True)))
        model.loss_logits = check_loss_logits(cfg.get("loss_logits"))
        if not source:
            init_parts(model, cfg)
        load_pretrained_blip2(model, cfg)
        prepare_vit(cfg, blip2.vision_model)
        if cfg.get("freeze_llm", True):
            model.freeze_language_model(str(cfg.get("llm_precision", "fp32")))
        return model

    @classmethod
    def configure_language_model(cls, text_config, cfg: Mapping[str, Any]) -> None:
        """Adjust the language model's config (in place) to LAVIS's before it is built."""

    @classmethod
    def load_language_model(cls, name: str, trust_remote_code: bool, cfg: Mapping[str, Any]) -> nn.Module:
        raise NotImplementedError

    def freeze_language_model(self, precision: str = "fp32") -> None:
        """As LAVIS: the language model is never trained in stage 2 (LoRA adds to it);
        held in ``precision`` (``fp32`` | ``fp16`` | ``bf16``)."""
        if precision not in _DTYPES:
            raise ValueError(f"llm_precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
        lm = self.blip2.language_model
        lm.requires_grad_(False)
        if precision != "fp32":
            from vlft.models.eva_vit import hold_own_precision

            lm.to(_DTYPES[precision])
            hold_own_precision(lm)

    def peft_parts(self) -> List[Any]:
        """LoRA adapters on export: ``adapter/`` for the whole ``Blip2ForConditionalGeneration``
        and ``adapter_llm/`` for its LLM alone (an ``OPTForCausalLM`` / ``T5ForConditionalGeneration``:
        ``Blip2ForConditionalGeneration.from_pretrained(hf_base).language_model``, or the LLM id
        vlft read, which its ``base_model_name_or_path`` names when there is one)."""
        from transformers import Blip2ForConditionalGeneration

        from vlft.models.peft_export import PeftPart

        lm = self.blip2.language_model
        return super().peft_parts() + [
            PeftPart("adapter_llm", "blip2.language_model", type(lm), base_attr="language_model",
                     base_class=Blip2ForConditionalGeneration, source=str(getattr(lm, "name_or_path", "") or ""))]

    # ------------------------------------------------------------------ inputs
    def query_embeds(self, image: torch.Tensor) -> torch.Tensor:
        """The queries' Q-Former output projected into the language model's embedding space."""
        vit = self.blip2.vision_model(pixel_values=image).last_hidden_state
        queries = self.blip2.query_tokens.expand(vit.shape[0], -1, -1)
        out = self.blip2.qformer(query_embeds=queries, encoder_hidden_states=vit,
                                 encoder_attention_mask=torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device))
        return self.blip2.language_projection(out.last_hidden_state)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.blip2.language_model.get_input_embeddings()(ids)

    def sources_targets(self, samples: Mapping[str, Any], prompt: Optional[str] = None):
        """``(sources, targets)`` for a batch (see the module docstring)."""
        prompt = self.prompt if prompt is None else prompt
        if samples.get("text_output") is not None:
            return [self.format_prompt(q, prompt) for q in samples["text_input"]], list(samples["text_output"])
        stripped = prompt.strip()
        targets = [t[len(stripped):].lstrip() if stripped and t.startswith(stripped) else t for t in samples["text_input"]]
        return [prompt] * len(targets), targets

    @staticmethod
    def format_prompt(text: str, prompt: str) -> str:
        return prompt.format(text) if "{}" in prompt else (f"{prompt}{text}" if prompt else text)

    def _tokens(self, texts: Sequence[str], side: str, max_length: int, special: bool = True):
        return self.tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length,
                              padding_side=side, add_special_tokens=special, return_tensors="pt").to(self.device)

    def lm_inputs(self, query: torch.Tensor, sources: Sequence[str], targets: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The language model's keyword arguments with ``labels`` (-100 where not learned),
        its embeddings in the language model's dtype (built outside autocast, which
        refuses to mix an fp16 language model with bf16 activations)."""
        with torch.autocast(device_type=query.device.type, enabled=False):
            return self._lm_inputs(query, sources, targets)

    def _lm_inputs(self, query: torch.Tensor, sources: Sequence[str], targets: Sequence[str]) -> Dict[str, torch.Tensor]:
        n, q = query.shape[:2]
        ones = torch.ones(n, q, dtype=torch.long, device=query.device)
        dtype = self.blip2.language_model.get_input_embeddings().weight.dtype
        if self.decoder_only:
            joined = [s + (" " if s and t and not s[-1].isspace() else "") + t + self.end_text for s, t in zip(sources, targets)]
            tok = self._tokens(joined, "right", self.max_txt_len)
            labels = tok.input_ids.masked_fill(tok.attention_mask == 0, -100)
            for i, s in enumerate(sources):
                # the source's tokens (with BOS); an empty source masks nothing unless bos_target is off (see above)
                if s or not self.bos_target:
                    labels[i, : len(self.tokenizer(s).input_ids)] = -100
            embeds = torch.cat([query.to(dtype), self.embed(tok.input_ids)], 1)
            return {"inputs_embeds": embeds, "attention_mask": torch.cat([ones, tok.attention_mask], 1),
                    "labels": torch.cat([torch.full_like(ones, -100), labels], 1)}
        src = self._tokens(sources, "right", self.max_txt_len)
        tgt = self._tokens(targets, "right", self.max_output_txt_len)
        return {"inputs_embeds": torch.cat([query.to(dtype), self.embed(src.input_ids)], 1),
                "attention_mask": torch.cat([ones, src.attention_mask], 1),
                "decoder_attention_mask": tgt.attention_mask,
                "labels": tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)}

    # ------------------------------------------------------------------ training
    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        sources, targets = self.sources_targets(samples)
        inputs = self.lm_inputs(self.query_embeds(samples["image"]), sources, targets)
        if self.decoder_only:
            return {"loss": causal_lm_loss(self.blip2.language_model, **inputs, loss_logits=self.loss_logits)}
        return {"loss": self.blip2.language_model(**inputs).loss}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, samples: Mapping[str, Any], use_nucleus_sampling: bool = False, num_beams: int = 5,
                 max_length: int = 30, min_length: int = 1, top_p: float = 0.9, repetition_penalty: float = 1.0,
                 length_penalty: float = 1.0, num_captions: int = 1, temperature: float = 1.0,
                 prompt: Optional[str] = None) -> List[str]:
        """Text for ``samples["image"]`` after ``prompt`` (default the model's; a
        ``samples["prompt"]`` list gives one per image). At most ``max_length`` new tokens;
        ``min_length`` as LAVIS counts it (see the module docstring)."""
        image = samples["image"]
        prompts = samples.get("prompt") or [self.prompt if prompt is None else prompt] * image.shape[0]
        return self._generate(image, list(prompts), dict(
            # LAVIS: OPT samples one sequence at a time; T5 keeps its beams (beam sampling)
            num_beams=1 if use_nucleus_sampling and self.decoder_only else max(num_beams, num_captions),
            do_sample=use_nucleus_sampling,
            top_p=top_p, temperature=temperature, max_new_tokens=max_length, min_length=min_length,
            repetition_penalty=repetition_penalty, length_penalty=length_penalty, num_return_sequences=num_captions))

    def _generate(self, image: torch.Tensor, sources: List[str], decoding: Dict[str, Any]) -> List[str]:
        """``decoding``: transformers' generate arguments, ``min_length`` in LAVIS's sense."""
        query = self.query_embeds(image)
        ones = torch.ones(query.shape[:2], dtype=torch.long, device=query.device)
        src = self._tokens(sources, "left" if self.decoder_only else "right", self.max_txt_len)
        # transformers 4.26 (LAVIS 1.0.2) counted the prompt's ids (OPT) or the decoder's start
        # token (T5) towards min_length; OPT generating from inputs_embeds has no prompt ids in
        # transformers 5, so the bound goes in as a number of new tokens, for both
        counted = src.input_ids.shape[1] if self.decoder_only else 1
        decoding = dict(decoding)
        decoding["min_new_tokens"] = max(int(decoding.pop("min_length", 0)) - counted, 0)
        with torch.autocast(device_type=query.device.type, enabled=False):
            text = self.embed(src.input_ids)
            embeds = torch.cat([query.to(text.dtype), text], 1)
        if not decoding.get("do_sample"):
            decoding = {k: v for k, v in decoding.items() if k not in ("top_p", "temperature")}
        if not self.decoder_only:  # T5: its encoder output's cross-attention keys/values are not re-copied per beam step
            decoding.update(beam_search_cache(int(decoding.get("num_beams", 1))))
        out = self.blip2.language_model.generate(
            inputs_embeds=embeds, attention_mask=torch.cat([ones, src.attention_mask], 1),
            eos_token_id=self.end_id, pad_token_id=self.tokenizer.pad_token_id, **decoding)
        return decode_texts(self.tokenizer, out)

    @torch.no_grad()
    def predict_answers(self, samples: Mapping[str, Any], inference_method: str = "generate", num_beams: int = 5,
                        max_len: int = 10, min_len: int = 1, answer_list: Optional[Sequence[str]] = None,
                        num_ans_candidates: int = 128, prompt: Optional[str] = None, length_penalty: float = -1.0,
                        **unused) -> List[str]:
        """Short answers to ``samples["text_input"]`` (questions), each put into ``prompt``
        (e.g. "Question: {} Short answer:"). ``rank`` picks the candidate of
        ``answer_list`` with the highest log-likelihood (every candidate is scored;
        ``num_ans_candidates`` is not used by this model)."""
        prompt = self.prompt if prompt is None else prompt
        sources = [self.format_prompt(q, prompt) for q in samples["text_input"]]
        if inference_method == "generate":
            return self._generate(samples["image"], sources, dict(num_beams=num_beams, max_new_tokens=max_len,
                                                                   min_length=min_len, length_penalty=length_penalty))
        if inference_method != "rank":
            raise ValueError(f"inference_method must be 'generate' or 'rank', got {inference_method!r}")
        if not answer_list:
            raise ValueError("inference_method 'rank' needs an answer_list (the dataset's answer_list or run.answer_list)")
        scores = self.candidate_logprobs(samples["image"], sources, list(answer_list))
        return [answer_list[i] for i in scores.argmax(1).tolist()]

    @torch.no_grad()
    def candidate_logprobs(self, image: torch.Tensor, sources: List[str], candidates: List[str],
                           chunk: int = 256) -> torch.Tensor:
        """[B, C] summed token log-probabilities of each candidate after each source."""
        query = self.query_embeds(image)
        b, c = len(sources), len(candidates)
        rows = [(i, j) for i in range(b) for j in range(c)]
        scores = torch.empty(b * c, device=query.device)
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            inputs = self.lm_inputs(query[[i for i, _ in part]], [sources[i] for i, _ in part], [candidates[j] for _, j in part])
            labels = inputs["labels"]  # T5 derives its decoder inputs from them
            logits = self.blip2.language_model(**inputs).logits.float()
            if self.decoder_only:
                logits, labels = logits[:, :-1], labels[:, 1:]
            logp = F.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
            scores[start:start + len(part)] = (logp * (labels != -100)).sum(-1)
        return scores.view(b, c)

    # ------------------------------------------------------------------ export
    def save_hf(self, out_dir: str) -> Path:
        """transformers' ``Blip2ForConditionalGeneration`` with a ``Blip2Processor``: an
        ``<image>`` token is added (the embedding table grows by one row if needed) and
        the processor puts ``num_query_tokens`` of them before the text, which is where
        this model puts the queries."""
        import copy

        from transformers import Blip2Processor, BlipImageProcessor

        from vlft.processors.image import CLIP_MEAN, CLIP_STD

        out = Path(out_dir)
        blip2, tokenizer = copy.deepcopy(self.blip2), copy.deepcopy(self.tokenizer)
        if "<image>" not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        if image_id >= blip2.language_model.get_input_embeddings().num_embeddings:
            blip2.language_model.resize_token_embeddings(image_id + 1)
        blip2.config.image_token_id = image_id
        blip2.config.text_config.vocab_size = blip2.language_model.get_input_embeddings().num_embeddings
        blip2.generation_config.eos_token_id = self.end_id
        blip2.generation_config.pad_token_id = tokenizer.pad_token_id
        blip2.save_pretrained(out)
        size = blip2.config.vision_config.image_size
        image_processor = BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
                                             image_std=list(CLIP_STD))
        Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                       num_query_tokens=blip2.config.num_query_tokens).save_pretrained(out)
        return out
