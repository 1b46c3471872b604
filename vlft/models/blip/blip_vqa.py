"""BLIP visual question answering (``blip_vqa``).

Paper: Li et al., "BLIP: Bootstrapping Language-Image Pre-training for Unified
Vision-Language Understanding and Generation", ICML 2022. Reference code:
salesforce/BLIP (``blip_vqa.py``) and LAVIS's ``blip_vqa``. Built on transformers'
``BlipForQuestionAnswering``: a ViT, a question encoder (BERT with cross-attention to the
image, ``text_encoder``) and an answer decoder (``text_decoder``, a ``BlipTextLMHeadModel``
cross-attending to the question encoder's states).

Weights load from a HF repo id or local HF directory (``from_pretrained``), from a LAVIS /
original BLIP ``.pth`` (keys renamed by ``vlft.models.convert.lavis_blip.convert_lavis_blip_vqa``),
or from a vlft checkpoint (``finetuned``). LAVIS semantics kept:

- the question starts with [ENC] instead of [CLS] when the tokenizer has [ENC] (BLIP's BERT
  tokenizer does; the word-level ``shapes_qa`` one does not, and keeps [CLS]);
  transformers' own ``BlipForQuestionAnswering.forward/generate`` always keep [CLS];
- answers are decoded from [DEC] and end with [SEP]; the training loss of one answer is the
  sum of its token cross-entropies with label smoothing (LAVIS: 0.1; transformers'
  ``BlipTextLMHeadModel`` applies ``text_config.label_smoothing``, which HF configs store
  as 0.0, so ``label_smoothing`` sets it), and the batch loss is
  ``sum(weight * answer loss) / batch size``;
- ``predict_answers`` generates by beam search or ranks a candidate list in two stages
  (first-token probability picks the top k, the full likelihood picks the answer).

Question padding: in transformers 5.23 BLIP's cross-attention drops ``encoder_attention_mask``
(``BlipTextAttention`` hands the mask on as ``attention_mask``, which ``BlipTextSelfAttention``
then replaces by its own ``encoder_attention_mask`` argument, None), so the answer decoder
would attend to the padding of shorter questions in a batch. ``mask_cross_attention`` puts the
mask back with a forward pre-hook. ``BlipForQuestionAnswering.generate`` (which honours
num_beams / max_length / min_length) gives the decoder an all-ones question mask besides, so
generation here calls the decoder's ``generate`` with the question's own mask. Answers therefore
do not depend on what a question is batched with.

Ranking scores a candidate by its plain log-likelihood; LAVIS uses its label-smoothed loss,
which can order close candidates differently.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common.registry import registry
from vlft.models.base_model import BaseModel
from vlft.models.generation_cache import beam_search_cache
from vlft.models.blip.blip_caption import build_blip_config, load_lavis_weights, load_tokenizer

logger = logging.getLogger(__name__)
_LAVIS_PREFIXES = ("visual_encoder.", "text_encoder.", "text_decoder.")


def load_lavis_vqa_weights(hf_model: nn.Module, source) -> None:
    """A LAVIS / original BLIP VQA checkpoint into a ``BlipForQuestionAnswering`` (see
    ``blip_caption.load_lavis_weights``)."""
    from vlft.models.convert.lavis_blip import convert_lavis_blip_vqa

    load_lavis_weights(hf_model, source, convert=convert_lavis_blip_vqa, what="VQA")


def resize_image_size(blip: nn.Module, image_size: int) -> None:
    """Make a loaded BLIP take ``image_size`` px images: its position embedding is interpolated
    (as LAVIS does when it loads a checkpoint at another resolution) and its config updated,
    so ``save_hf`` writes a model of the new size."""
    from vlft.models.convert.lavis_blip import interpolate_pos_embed

    embeddings = blip.vision_model.embeddings
    num_patches = (image_size // embeddings.patch_size) ** 2
    old = embeddings.position_embedding
    embeddings.position_embedding = nn.Parameter(interpolate_pos_embed(old.data, num_patches), requires_grad=old.requires_grad)
    embeddings.image_size, embeddings.num_patches, embeddings.num_positions = image_size, num_patches, num_patches + 1
    blip.config.vision_config.image_size = image_size
    logger.info("BLIP vision position embedding interpolated to %d px (%d patches)", image_size, num_patches)


def _cross_attention_mask_hook(module: nn.Module, args, kwargs):
    # the mask reaches the cross-attention as ``attention_mask``; keep it as the encoder mask
    if kwargs.get("encoder_hidden_states") is not None and kwargs.get("encoder_attention_mask") is None:
        kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
    return args, kwargs


def mask_cross_attention(blip: nn.Module) -> int:
    """Make every BLIP text cross-attention honour its encoder mask (see the module docstring);
    a no-op where transformers already passes it. Returns the number of layers hooked."""
    hooked = 0
    for name, module in blip.named_modules():
        if name.endswith("crossattention.self") and not getattr(module, "_vlft_mask_hook", False):
            module.register_forward_pre_hook(_cross_attention_mask_hook, with_kwargs=True)
            module._vlft_mask_hook = True
            hooked += 1
    return hooked


@registry.register_model("blip_vqa")
class BlipVqa(BaseModel):
    hf_attr = "blip"  # BlipForQuestionAnswering: LoRA adapters export in its names
    PRETRAINED_MODEL_CONFIG_DICT = {
        "vqav2": "configs/models/blip/vqa_vqav2.yaml",
        "vqav2_capfilt_large": "configs/models/blip/vqa_vqav2_capfilt_large.yaml",
        "okvqa": "configs/models/blip/vqa_okvqa.yaml",
        "aokvqa": "configs/models/blip/vqa_aokvqa.yaml",
        "tiny": "configs/models/blip/vqa_tiny.yaml",
    }
    CONFIG_KEYS = ("trust_remote_code",)  # beyond the default YAMLs (vlft.common.validate_model)
    HF_SUB_CONFIGS = {"vision_config": "BlipVisionConfig", "text_config": "BlipTextConfig"}
    POSITION_LIMITS = {"max_txt_len": "text_config"}

    def __init__(self, blip: nn.Module, tokenizer, max_txt_len: int = 35, label_smoothing: Optional[float] = None):
        """``blip``: a transformers ``BlipForQuestionAnswering``. ``label_smoothing``: the answer
        loss's (None keeps the text config's value)."""
        super().__init__()
        self.blip = blip
        mask_cross_attention(blip)
        self.tokenizer = tokenizer
        self.max_txt_len = max_txt_len
        if label_smoothing is not None:  # the decoder copies the value at construction; set both
            blip.config.text_config.label_smoothing = float(label_smoothing)
            blip.text_decoder.label_smoothing = float(label_smoothing)
        vocab = tokenizer.get_vocab()
        self.enc_token_id: Optional[int] = vocab.get("[ENC]")
        self._answer_cache: Optional[Tuple[Tuple[str, ...], torch.Tensor, torch.Tensor]] = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BlipVqa":
        """A HF ``pretrained`` loads whole; a LAVIS / vlft checkpoint goes on a model built from
        the configured sizes, by LAVIS's rule (``blip_base.load_configured_weights``: with
        ``load_finetuned`` a complete LAVIS ``finetuned`` replaces ``pretrained``)."""
        from transformers import BlipForQuestionAnswering

        from vlft.models.blip.blip_base import hf_pretrained, load_configured_weights

        hf_source = hf_pretrained(cfg)
        tokenizer = load_tokenizer(cfg.get("tokenizer") or hf_source or "bert-base-uncased")
        if hf_source:
            blip = BlipForQuestionAnswering.from_pretrained(hf_source, trust_remote_code=bool(cfg.get("trust_remote_code", False)))
            image_size = cfg.get("image_size")
            if image_size and image_size != blip.config.vision_config.image_size:
                resize_image_size(blip, int(image_size))
        else:
            blip = BlipForQuestionAnswering(build_blip_config(cfg, tokenizer))
        model = cls(blip, tokenizer, max_txt_len=cfg.get("max_txt_len", 35), label_smoothing=cfg.get("label_smoothing"))
        load_configured_weights(model, cfg)
        return model

    def load_checkpoint(self, path):
        """A vlft checkpoint, or a LAVIS ``blip_vqa`` checkpoint (recognised by its keys); a path or
        an already loaded dict."""
        from vlft.runners.checkpoint import load_model_weights, read

        raw = read(path) if not isinstance(path, Mapping) else path
        state = raw.get("model", raw)
        if any(k.startswith(_LAVIS_PREFIXES) for k in state):
            load_lavis_vqa_weights(self.blip, raw)
            return [], []
        return load_model_weights(self, raw)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Sequence[str]):
        return self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_txt_len,
                              return_tensors="pt").to(self.device)

    def question_ids(self, questions: Sequence[str]):
        """Tokenized questions with [ENC] in place of [CLS] where the tokenizer has [ENC] (LAVIS)."""
        text = self.tokenize(questions)
        if self.enc_token_id is not None:
            text["input_ids"] = text.input_ids.clone()
            text.input_ids[:, 0] = self.enc_token_id
        return text

    def answer_ids(self, answers: Sequence[str]):
        """Tokenized answers starting with [DEC] (the decoder's start token) and ending with [SEP]."""
        text = self.tokenize(answers)
        text["input_ids"] = text.input_ids.clone()
        text.input_ids[:, 0] = self.tokenizer.bos_token_id
        return text

    def encode_question(self, image: torch.Tensor, questions: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The question encoder's states (cross-attending to the image) and the question mask."""
        text = self.question_ids(questions)
        image_embeds = self.blip.vision_model(pixel_values=image).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        states = self.blip.text_encoder(input_ids=text.input_ids, attention_mask=text.attention_mask,
                                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts).last_hidden_state
        return states, text.attention_mask

    # ------------------------------------------------------------------ training
    @staticmethod
    def _answer_fields(samples: Mapping[str, Any]) -> Tuple[List[str], Any, Any]:
        """(answers, weights, n_answers); LAVIS's singular ``answer`` / ``weight`` are accepted too."""
        answers = samples.get("answers", samples.get("answer"))
        weights = samples.get("weights", samples.get("weight"))
        n_answers = samples.get("n_answers")
        missing = [k for k, v in (("answers", answers), ("weights", weights), ("n_answers", n_answers)) if v is None]
        if missing:
            raise KeyError(f"blip_vqa training samples need {missing} (have {sorted(samples)}): answers is a flat list "
                           f"over the batch, weights a float per answer, n_answers the count per question")
        return list(answers), weights, n_answers

    def forward(self, samples: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        """``samples``: ``image`` [B,3,H,W], ``text_input`` (B questions), ``answers`` (flat list),
        ``weights`` (one per answer), ``n_answers`` [B]. Loss as LAVIS: sum(weight * answer loss) / B."""
        answers, weights, n_answers = self._answer_fields(samples)
        device = self.device
        n_answers = torch.as_tensor(n_answers, dtype=torch.long, device=device)
        weights = torch.as_tensor(weights, dtype=torch.float, device=device)
        batch = samples["image"].size(0)
        if n_answers.numel() != batch or int(n_answers.sum()) != len(answers) or weights.numel() != len(answers):
            raise ValueError(f"blip_vqa: {batch} images, n_answers {n_answers.tolist()} (sum {int(n_answers.sum())}), "
                             f"{len(answers)} answers and {weights.numel()} weights do not agree")
        states, question_mask = self.encode_question(samples["image"], samples["text_input"])
        answer = self.answer_ids(answers)
        labels = answer.input_ids.masked_fill(answer.input_ids == self.tokenizer.pad_token_id, -100)
        out = self.blip.text_decoder(input_ids=answer.input_ids, attention_mask=answer.attention_mask,
                                     encoder_hidden_states=states.repeat_interleave(n_answers, dim=0),
                                     encoder_attention_mask=question_mask.repeat_interleave(n_answers, dim=0),
                                     labels=labels, reduction="none")  # per answer: the sum over its tokens
        return {"loss": (weights * out.loss).sum() / batch}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_answers(self, samples: Mapping[str, Any], inference_method: str = "generate",
                        answer_list: Optional[Sequence[str]] = None, num_beams: int = 3, max_len: int = 10,
                        min_len: int = 1, num_ans_candidates: int = 128, prompt: Optional[str] = None,
                        **unused) -> List[str]:
        """One answer per question. ``generate``: beam search from [DEC] (``max_len`` / ``min_len``
        count tokens including [DEC], as in LAVIS). ``rank``: the best member of ``answer_list``
        (LAVIS's two stages; ``num_ans_candidates`` survive the first). ``prompt``, when given,
        is formatted with each question (``"Question: {} Answer:"``) or put in front of it."""
        questions = samples["text_input"]
        questions = [questions] if isinstance(questions, str) else list(questions)
        if prompt:  # a prompt without "{}" goes in front (LAVIS's .format would drop the question)
            questions = [prompt.format(q) if "{}" in prompt else prompt + q for q in questions]
        if inference_method not in ("generate", "rank"):
            raise ValueError(f"blip_vqa: inference_method must be 'generate' or 'rank', got {inference_method!r}")
        if inference_method == "rank" and not answer_list:
            raise ValueError("blip_vqa: inference_method='rank' needs answer_list (the candidate answers), got none")
        states, question_mask = self.encode_question(samples["image"], questions)
        if inference_method == "generate":
            return self._generate_answers(states, question_mask, num_beams, max_len, min_len)
        return self._rank_answers(states, question_mask, list(answer_list), num_ans_candidates)

    def _generate_answers(self, states, question_mask, num_beams: int, max_len: int, min_len: int) -> List[str]:
        start = torch.full((states.size(0), 1), self.tokenizer.bos_token_id, dtype=torch.long, device=states.device)
        # generate() repeats encoder_hidden_states / encoder_attention_mask for the beams itself
        out = self.blip.text_decoder.generate(
            input_ids=start, attention_mask=torch.ones_like(start), encoder_hidden_states=states,
            encoder_attention_mask=question_mask, num_beams=num_beams, do_sample=False, max_length=max_len,
            min_length=min_len, eos_token_id=self.tokenizer.sep_token_id, pad_token_id=self.tokenizer.pad_token_id,
            **beam_search_cache(num_beams))  # the question's cross-attention keys/values are not re-copied per step
        return [a.strip() for a in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _candidates(self, answer_list: List[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The answer list tokenized ([DEC] ... [SEP]), once per list."""
        key = tuple(answer_list)
        if self._answer_cache is None or self._answer_cache[0] != key:
            text = self.answer_ids(answer_list)
            self._answer_cache = (key, text.input_ids, text.attention_mask)
        _, ids, mask = self._answer_cache
        return ids.to(self.device), mask.to(self.device)

    def _rank_answers(self, states, question_mask, answer_list: List[str], num_ans_candidates: int) -> List[str]:
        ids, mask = self._candidates(answer_list)
        batch, k = states.size(0), min(num_ans_candidates, len(answer_list))
        decoder = self.blip.text_decoder
        # stage 1: the probability of each candidate's first token after [DEC] keeps the top k
        start = ids[:1, :1].expand(batch, 1)
        first = decoder(input_ids=start, encoder_hidden_states=states, encoder_attention_mask=question_mask,
                        use_cache=False).logits[:, 0]
        first_probs = first.float().softmax(dim=-1).index_select(1, ids[:, 1])  # [B, N]
        top_ids = first_probs.topk(k, dim=1).indices  # [B, k]
        # stage 2: each survivor's full log-likelihood ([SEP] included, padding not), batched B*k
        cand_ids, cand_mask = ids[top_ids.flatten()], mask[top_ids.flatten()]
        logits = decoder(input_ids=cand_ids, attention_mask=cand_mask,
                         encoder_hidden_states=states.repeat_interleave(k, dim=0),
                         encoder_attention_mask=question_mask.repeat_interleave(k, dim=0), use_cache=False).logits
        token_logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, cand_ids[:, 1:, None]).squeeze(-1)
        score = (token_logp * cand_mask[:, 1:]).sum(dim=1).view(batch, k)
        best = top_ids.gather(1, score.argmax(dim=1, keepdim=True)).squeeze(1)
        return [answer_list[i] for i in best.tolist()]

    # ------------------------------------------------------------------ export
    def save_hf(self, out_dir: str) -> Path:
        """Save in HF format (model, tokenizer, image processor), loadable by
        ``BlipForQuestionAnswering.from_pretrained`` / ``AutoProcessor.from_pretrained``."""
        from transformers import BlipImageProcessor

        from vlft.processors.image import CLIP_MEAN, CLIP_STD

        out = Path(out_dir)
        self.blip.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        size = self.blip.config.vision_config.image_size
        BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out)
        return out
