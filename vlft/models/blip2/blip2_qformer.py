"""BLIP-2 stage 1: the Q-Former over a frozen image encoder (``blip2``,
``blip2_feature_extractor``, ``blip2_image_text_matching``).

Paper: Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image
Encoders and Large Language Models", ICML 2023. Reference code: LAVIS's
``blip2_qformer``. Built on transformers' ``Blip2ForImageTextRetrieval`` (the ViT, the
learned query tokens, the Q-Former, its text embeddings, the two projections and the ITM
head), so ``save_hf`` writes a model transformers loads as it is. vlft adds what that
class lacks for training: the image-grounded generation (ITG) head, tied to the
Q-Former's word embeddings, and the learnable contrastive temperature.

The three losses, as LAVIS computes them:

- ITC: every query's projected output against the text's [CLS] projection, the best
  query per pair, over the texts and images of all ranks. The gathered side of each
  direction is a constant, also on one rank (LAVIS's ``concat_all_gather``): image-to-
  text similarities train the image features, text-to-image ones the text features.
  Targets: label smoothing 0.1 over the global batch, the positive mass spread evenly
  over the pairs that show the same image (``samples["image_id"]``: a tensor, ints,
  strings or any hashable ids, compared across ranks; LAVIS HEAD's rule), which makes
  them no negatives; without ids each pair is its own positive.
- ITM: for each pair, one hard negative image and one hard negative text sampled from
  the ITC similarities, never one showing the same image; queries and text attend to
  each other; the queries' mean 2-way logit.
- ITG: the caption decoded from [DEC] by the Q-Former's text side, which sees every
  query (queries never see the text) and earlier tokens; label smoothing 0.1. As LAVIS,
  the text attends to the query keys and values of the ITC pass (its
  ``past_key_values``; here recorded from that pass, see ``qformer_text``) instead of
  running the queries again, so gradients from ITG flow through the ITC pass.

``generate`` captions with the same decoder (LAVIS's ``Blip2Qformer.generate``): from
[DEC], over the queries' keys and values, until [SEP]; beam search or nucleus sampling.

Also as LAVIS (checked against salesforce-lavis 1.0.2 on the same weights):

- the temperature is not clamped (LAVIS clamps BLIP's to [0.001, 0.5], never BLIP-2's);
  ``clamp_temp: true`` clamps it as BLIP does;
- retrieval (``compute_sim_matrix``) tokenizes texts at 35 tokens whatever
  ``max_txt_len`` is (:data:`RETRIEVAL_MAX_TXT_LEN`), and adds the ITM head's "match"
  logit (the mean over the queries), not a probability, to the ITC similarity;
- ``extract_features`` pads texts to the batch's longest and projects every text
  position (``text_embeds_proj`` is [B, L, D]; [:, 0] is the [CLS] feature);
- captions are decoded as LAVIS's (``blip2_base.decode_texts``); ``max_length`` /
  ``min_length`` count [DEC]. transformers 5's beam search counts a hypothesis cut at
  ``max_length`` one token shorter than 4.26 in ``length_penalty``'s normalisation,
  which can change a caption where a finished and a running beam are close.

The tokenizer is LAVIS's BLIP-2 one: bert-base-uncased plus ``[DEC]`` as bos (30,523
tokens, as HF's ``Salesforce/blip2-*``), without BLIP's ``[ENC]``.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common import dist
from vlft.common.registry import registry
from vlft.models.blip.blip_caption import load_tokenizer
from vlft.models.blip2 import qformer_text
from vlft.models.blip2.blip2_base import (Blip2Base, build_qformer_config, decode_texts, hf_source, init_parts,
                                          init_query_tokens, load_pretrained_blip2, prepare_vit)
from vlft.models.image_ids import image_ids_to_tensor

logger = logging.getLogger(__name__)

#: LAVIS's ``compute_sim_matrix`` tokenizes retrieval texts at 35 tokens (``blip2.py``)
RETRIEVAL_MAX_TXT_LEN = 35


class QFormerLMHead(nn.Module):
    """BERT's LM prediction head (dense, GELU, LayerNorm, vocabulary projection)."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


@registry.register_model("blip2")
class Blip2Qformer(Blip2Base):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain": "configs/models/blip2/blip2_pretrain.yaml",
        "pretrain_vitL": "configs/models/blip2/blip2_pretrain_vitL.yaml",
        "coco": "configs/models/blip2/blip2_coco.yaml",
        "tiny": "configs/models/blip2/blip2_tiny.yaml",
    }
    CONFIG_KEYS = ("clamp_temp",)  # beyond the default YAMLs (vlft.common.validate_model)
    POSITION_LIMITS = {"max_txt_len": "qformer_config"}

    def __init__(self, blip2: nn.Module, tokenizer, max_txt_len: int = 32, clamp_temp: bool = False):
        super().__init__()
        self.blip2 = blip2
        self.tokenizer = tokenizer
        self.max_txt_len = max_txt_len
        self.clamp_temp = clamp_temp
        qcfg = blip2.config.qformer_config
        self.itg_head = QFormerLMHead(qcfg.hidden_size, qcfg.vocab_size, qcfg.layer_norm_eps)
        self.itg_head.decoder.weight = blip2.embeddings.word_embeddings.weight  # tied, as in BERT
        self.temp = nn.Parameter(torch.tensor(0.07))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]):
        from transformers import Blip2ForImageTextRetrieval

        source = hf_source(cfg)
        tokenizer = load_tokenizer(cfg.get("tokenizer") or source or "bert-base-uncased", enc_token=False)
        if source:
            blip2 = Blip2ForImageTextRetrieval.from_pretrained(source, trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        else:
            blip2 = Blip2ForImageTextRetrieval(build_qformer_config(cfg, tokenizer))
            init_query_tokens(blip2)
        model = cls(blip2, tokenizer, max_txt_len=cfg.get("max_txt_len", 32), clamp_temp=bool(cfg.get("clamp_temp", False)))
        if not source:
            init_parts(model, cfg)
        load_pretrained_blip2(model, cfg)
        prepare_vit(cfg, blip2.vision_model)
        return model

    def no_weight_decay(self) -> set:
        return {"temp", "blip2.query_tokens"}

    # ------------------------------------------------------------------ encoders
    @property
    def num_query(self) -> int:
        return self.blip2.query_tokens.shape[1]

    def tokenize(self, texts: List[str], max_length: Optional[int] = None, padding: str = "max_length"):
        """Texts padded to ``max_length`` (default ``max_txt_len``), or with ``padding="longest"``
        to the longest text (truncated only at the Q-Former's position limit)."""
        limit = self.blip2.config.qformer_config.max_position_embeddings
        length = min(max_length or self.max_txt_len, limit) if padding == "max_length" else limit
        return self.tokenizer(list(texts), padding=padding, truncation=True, max_length=length,
                              return_tensors="pt").to(self.device)

    def encode_image(self, image: torch.Tensor, with_query_kv: bool = False):
        """``(vit_embeds, query_output)``: the ViT's patch features (after ``ln_vision``)
        and the queries' Q-Former output; with ``with_query_kv`` also the queries'
        self-attention keys and values per layer (the ITG / ``generate`` prefix)."""
        vit = self.blip2.vision_model(pixel_values=image).last_hidden_state
        queries = self.blip2.query_tokens.expand(vit.shape[0], -1, -1)
        with (qformer_text.record_query_kv(self.blip2.qformer) if with_query_kv else contextlib.nullcontext()) as query_kv:
            out = self.blip2.qformer(query_embeds=queries, encoder_hidden_states=vit,
                                     encoder_attention_mask=torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device))
        return (vit, out.last_hidden_state, query_kv) if with_query_kv else (vit, out.last_hidden_state)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The Q-Former's unimodal text output (no queries, no image)."""
        embeds = self.blip2.embeddings(input_ids=input_ids)
        return self.blip2.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask).last_hidden_state

    def encode_multimodal(self, vit: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          causal_text: bool = False) -> torch.Tensor:
        """Queries and text together, the queries cross-attending to ``vit``; with
        ``causal_text`` the ITG mask (queries see queries; text sees queries and earlier
        text): the ITG pass computed in one go, queries included (training and
        ``generate`` use the cheaper ``decode_text`` over the ITC pass's query keys and
        values, which gives the same values)."""
        n, q = input_ids.shape[0], self.num_query
        queries = self.blip2.query_tokens.expand(n, -1, -1)
        embeds = self.blip2.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat([torch.ones(n, q, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], 1)
        if causal_text:
            mask = self._itg_mask(mask, q, embeds.dtype)
        return self.blip2.qformer(query_embeds=embeds, query_length=q, attention_mask=mask, encoder_hidden_states=vit,
                                  encoder_attention_mask=torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device)
                                  ).last_hidden_state

    def decode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_kv) -> torch.Tensor:
        """The Q-Former's text-side output for ``input_ids`` (from [DEC]) attending to the
        queries' keys and values ``query_kv`` (from ``encode_image(..., with_query_kv=True)``)
        and causally to the earlier text, as LAVIS's ITG with ``past_key_values``."""
        return qformer_text.text_hidden_states(self.blip2, input_ids, attention_mask, query_kv)

    @staticmethod
    def _itg_mask(padding: torch.Tensor, num_query: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive [n, 1, L, L] mask: queries attend to queries; text attends to the
        queries and to itself causally; padded keys are never attended."""
        n, length = padding.shape
        allowed = torch.ones(length, length, dtype=torch.bool, device=padding.device).tril()
        allowed[:, :num_query] = True
        allowed[:num_query, num_query:] = False
        allowed = allowed[None] & padding[:, None, :].bool()
        return torch.zeros(n, 1, length, length, dtype=dtype, device=padding.device).masked_fill(
            ~allowed[:, None], torch.finfo(dtype).min)

    def image_feats(self, query_output: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.blip2.vision_projection(query_output), dim=-1)

    def text_feat(self, text_output: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.blip2.text_projection(text_output[:, 0]), dim=-1)

    def itm_logits(self, multimodal_output: torch.Tensor) -> torch.Tensor:
        return self.blip2.itm_head(multimodal_output[:, : self.num_query]).mean(dim=1)

    # ------------------------------------------------------------------ training
    def forward(self, samples: Mapping[str, Any], match_head: Optional[str] = None):
        if match_head is not None:
            return self.match(samples, match_head)
        image = samples["image"]
        text = self.tokenize(samples["text_input"])
        vit, query_output, query_kv = self.encode_image(image, with_query_kv=True)
        image_feats = self.image_feats(query_output)  # [B, Q, D]
        text_feat = self.text_feat(self.encode_text(text.input_ids, text.attention_mask))  # [B, D]

        # ITC over the global batch
        if self.clamp_temp:  # off by default: LAVIS's BLIP-2 never clamps its temperature
            with torch.no_grad():
                self.temp.clamp_(0.001, 0.5)
        # the other side of each similarity is a constant, as LAVIS's concat_all_gather makes
        # it on any number of ranks (gather_tensors hands back the tensor itself on one)
        image_feats_all = dist.gather_tensors(image_feats).detach()
        text_feat_all = dist.gather_tensors(text_feat).detach()
        sim_i2t = torch.einsum("iqd,td->itq", image_feats.float(), text_feat_all.float()).max(-1).values / self.temp
        sim_t2i = torch.einsum("td,iqd->tiq", text_feat.float(), image_feats_all.float()).max(-1).values / self.temp
        b = image.shape[0]
        same = self.same_image(samples.get("image_id"), b, sim_i2t.shape[1], image.device)  # [B, B_all]
        targets = itc_targets(same)
        loss_itc = (F.cross_entropy(sim_i2t, targets) + F.cross_entropy(sim_t2i, targets)) / 2

        # ITM with hard negatives
        vit_all = dist.gather_tensors(vit, with_grad=True)
        ids_all, atts_all = dist.gather_tensors(text.input_ids), dist.gather_tensors(text.attention_mask)
        with torch.no_grad():
            neg_image = _sample_negatives(sim_t2i, same)
            neg_text = _sample_negatives(sim_i2t, same)
        itm_ids = torch.cat([text.input_ids, text.input_ids, ids_all[neg_text]])
        itm_atts = torch.cat([text.attention_mask, text.attention_mask, atts_all[neg_text]])
        itm_vit = torch.cat([vit, vit_all[neg_image], vit])
        logits = self.itm_logits(self.encode_multimodal(itm_vit, itm_ids, itm_atts))
        itm_labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(image.device)
        loss_itm = F.cross_entropy(logits.float(), itm_labels)

        # ITG over the ITC pass's query keys and values (LAVIS's past_key_values)
        dec_ids = text.input_ids.clone()
        dec_ids[:, 0] = self.tokenizer.bos_token_id
        hidden = self.decode_text(dec_ids, text.attention_mask, query_kv)
        labels = dec_ids.masked_fill(text.attention_mask == 0, -100)
        lm_logits = self.itg_head(hidden[:, :-1]).float()
        loss_itg = F.cross_entropy(lm_logits.reshape(-1, lm_logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100, label_smoothing=0.1)
        return {"loss": loss_itc + loss_itm + loss_itg, "loss_itc": loss_itc.detach(), "loss_itm": loss_itm.detach(),
                "loss_itg": loss_itg.detach()}

    @staticmethod
    def same_image(image_ids: Any, batch_size: int, n_all: int, device: torch.device) -> torch.Tensor:
        """[B, B_all] True where this rank's pair ``i`` and the global batch's pair ``j``
        show the same image (never a negative). Without ids, only ``j`` = ``i`` itself."""
        if image_ids is None:
            same = torch.zeros(batch_size, n_all, dtype=torch.bool, device=device)
            same[torch.arange(batch_size), torch.arange(batch_size) + dist.batch_offset(batch_size, device)] = True
            return same
        ids, ids_all = gather_image_ids(image_ids, device)
        if ids.numel() != batch_size or ids_all.numel() != n_all:
            raise ValueError(f"samples['image_id'] has {ids.numel()} ids for {batch_size} images (one id per image expected)")
        return ids[:, None] == ids_all[None, :]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def match(self, samples: Mapping[str, Any], match_head: str = "itm") -> torch.Tensor:
        """LAVIS's ``Blip2ITM`` scores: ``itm`` gives [B, 2] match logits, ``itc`` the
        cosine similarity of each pair (the best query)."""
        if match_head not in ("itm", "itc"):
            raise ValueError(f"match_head must be 'itm' or 'itc', got {match_head!r}")
        text = self.tokenize(samples["text_input"])
        vit, query_output = self.encode_image(samples["image"])
        if match_head == "itm":
            return self.itm_logits(self.encode_multimodal(vit, text.input_ids, text.attention_mask))
        text_feat = self.text_feat(self.encode_text(text.input_ids, text.attention_mask))
        return torch.einsum("bqd,bd->bq", self.image_feats(query_output), text_feat).max(-1).values

    @torch.no_grad()
    def generate(self, samples: Mapping[str, Any], use_nucleus_sampling: bool = False, num_beams: int = 3,
                 max_length: int = 30, min_length: int = 10, top_p: float = 0.9, repetition_penalty: float = 1.0,
                 num_captions: int = 1) -> List[str]:
        """Captions for ``samples["image"]`` by the Q-Former's text side (LAVIS's
        ``Blip2Qformer.generate``): from [DEC] over the queries' keys and values, ending at
        [SEP]; ``num_captions`` per image, image-major. ``max_length`` / ``min_length``
        count tokens including [DEC], as in LAVIS (transformers' ``max_length``). Beam
        search with ``num_beams`` (at least ``num_captions``), or nucleus sampling
        (``top_p``, and transformers' top-k of 50 that LAVIS's decoding also had).
        ``repetition_penalty`` is applied; LAVIS 1.0.2's ``Blip2Qformer.generate`` accepts it
        but never passes it on (any value gives its 1.0 captions)."""
        from transformers import GenerationConfig

        image = samples["image"]
        _, _, query_kv = self.encode_image(image, with_query_kv=True)
        tok = self.tokenizer
        decoding = dict(num_beams=max(num_beams, num_captions), do_sample=False)
        if use_nucleus_sampling:
            decoding = dict(num_beams=1, do_sample=True, top_p=top_p, top_k=50, temperature=1.0)
        config = GenerationConfig(max_length=max_length, min_length=min_length, repetition_penalty=repetition_penalty,
                                  num_return_sequences=num_captions, length_penalty=1.0, early_stopping=False,
                                  use_cache=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id,
                                  pad_token_id=tok.pad_token_id, **decoding)
        start = torch.full((image.shape[0], 1), tok.bos_token_id, dtype=torch.long, device=image.device)
        captioner = qformer_text.make_captioner(self.blip2, self.itg_head, tok)
        out = captioner.generate(input_ids=start, attention_mask=torch.ones_like(start),
                                 query_kv=qformer_text.pack_query_kv(query_kv), generation_config=config)
        return decode_texts(tok, out)

    @torch.no_grad()
    def extract_features(self, samples: Mapping[str, Any], mode: str = "multimodal") -> Dict[str, torch.Tensor]:
        """LAVIS's features: ``image`` (query outputs and their normalized projections),
        ``text`` (the text's outputs [B, L, H] and their normalized projections [B, L, D],
        the [CLS] feature first) or ``multimodal`` (the queries' output when they also
        attend to the text). Texts are padded to the batch's longest, as LAVIS does."""
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        out: Dict[str, torch.Tensor] = {}
        if mode in ("image", "multimodal"):
            vit, query_output = self.encode_image(samples["image"])
            out.update(image_embeds=query_output, image_embeds_proj=self.image_feats(query_output))
        if mode in ("text", "multimodal"):
            text = self.tokenize(samples["text_input"], padding="longest")
            if mode == "text":
                text_output = self.encode_text(text.input_ids, text.attention_mask)
                out.update(text_embeds=text_output,
                           text_embeds_proj=F.normalize(self.blip2.text_projection(text_output), dim=-1))
            else:
                out["multimodal_embeds"] = self.encode_multimodal(vit, text.input_ids, text.attention_mask)[:, : self.num_query]
        return out

    # retrieval (task ``retrieval``): ITC candidates, re-ranked by ITM
    @torch.no_grad()
    def retrieval_image_features(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        vit, query_output = self.encode_image(image)
        return {"embeds": vit, "feat": self.image_feats(query_output)}

    @torch.no_grad()
    def retrieval_text_features(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        """Ids, mask and ITC feature of each text, tokenized at LAVIS's retrieval length."""
        text = self.tokenize(texts, max_length=RETRIEVAL_MAX_TXT_LEN)
        return {"ids": text.input_ids, "atts": text.attention_mask,
                "feat": self.text_feat(self.encode_text(text.input_ids, text.attention_mask))}

    @staticmethod
    def retrieval_similarity(image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
        """[n_images, n_texts] ITC similarity (the best query per pair)."""
        return torch.einsum("iqd,td->itq", image_feat.float(), text_feat.float()).max(-1).values

    @torch.no_grad()
    def retrieval_itm_score(self, image_embeds: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor) -> torch.Tensor:
        """The "match" logit of each (image, text) row pair, averaged over the queries (LAVIS's
        ``compute_itm``: retrieval adds this logit, not a probability, to the ITC similarity)."""
        return self.itm_logits(self.encode_multimodal(image_embeds, ids, atts)).float()[:, 1]

    # ------------------------------------------------------------------ export
    def save_hf(self, out_dir: str) -> Path:
        """The Q-Former model as transformers' ``Blip2ForImageTextRetrieval`` (the ITG
        head and the temperature have no place there and are not written)."""
        from transformers import BlipImageProcessor

        from vlft.processors.image import CLIP_MEAN, CLIP_STD

        out = Path(out_dir)
        self.blip2.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        size = self.blip2.config.vision_config.image_size
        BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
                           image_std=list(CLIP_STD)).save_pretrained(out)
        return out


def gather_image_ids(image_ids: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(this rank's ids, every rank's ids)`` as int64 tensors in which equal image ids
    are equal numbers on every rank: strings and other hashables become stable hash codes
    (vlft/models/image_ids.py), so they are gathered as a tensor like integer ids."""
    ids = image_ids_to_tensor(image_ids, device)
    return ids, dist.gather_tensors(ids)


def itc_targets(same: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """LAVIS's ITC target distribution per row: ``1 - smoothing`` spread evenly over the
    same-image columns, ``smoothing`` over all columns (with one positive per row, the
    targets of ``cross_entropy(..., label_smoothing=0.1)``)."""
    positives = same.float()
    return (1.0 - smoothing) * positives / positives.sum(1, keepdim=True) + smoothing / same.shape[1]


def _sample_negatives(sim: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """One index per row drawn in proportion to softmax(sim), never a same-image one
    (a row with no other image falls back to a uniform draw)."""
    weights = sim.float().softmax(dim=1).masked_fill(same, 0.0) + 1e-4 * (~same)
    empty = weights.sum(1) == 0
    if empty.any():
        weights[empty] = 1.0
    return torch.multinomial(weights, 1).squeeze(1)


@registry.register_model("blip2_feature_extractor")
class Blip2FeatureExtractor(Blip2Qformer):
    """``extract_features`` for image, text and multimodal embeddings (LAVIS's name)."""

    PRETRAINED_MODEL_CONFIG_DICT = dict(Blip2Qformer.PRETRAINED_MODEL_CONFIG_DICT)


@registry.register_model("blip2_image_text_matching")
class Blip2ImageTextMatching(Blip2Qformer):
    """``model(samples, match_head="itm" | "itc")`` scores image-text pairs (LAVIS's
    ``Blip2ITM``); without ``match_head`` it trains like ``blip2``."""

    PRETRAINED_MODEL_CONFIG_DICT = dict(Blip2Qformer.PRETRAINED_MODEL_CONFIG_DICT)
