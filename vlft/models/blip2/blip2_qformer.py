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
  query per pair, over the texts and images of all ranks (targets are this rank's slice;
  label smoothing 0.1; the temperature is clamped to [0.001, 0.5]). Pairs showing the
  same image (``samples["image_id"]``) are not negatives.
- ITM: for each pair, one hard negative image and one hard negative text sampled from
  the ITC similarities; queries and text attend to each other; the queries' mean
  2-way logit.
- ITG: the caption decoded from [DEC] by the Q-Former's text side, which sees every
  query (queries never see the text) and earlier tokens; label smoothing 0.1. LAVIS
  reuses the ITC pass's query keys and values; here the queries are recomputed in the
  same pass under the same mask, which gives the same values (dropout aside).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common import dist
from vlft.common.registry import registry
from vlft.models.base_model import BaseModel
from vlft.models.blip.blip_caption import load_tokenizer

logger = logging.getLogger(__name__)


class QFormerLMHead(nn.Module):
    """BERT's LM prediction head (dense, GELU, LayerNorm, vocabulary projection)."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


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


@registry.register_model("blip2")
class Blip2Qformer(Blip2Base):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "pretrain": "configs/models/blip2/blip2_pretrain.yaml",
        "pretrain_vitL": "configs/models/blip2/blip2_pretrain_vitL.yaml",
        "coco": "configs/models/blip2/blip2_coco.yaml",
        "tiny": "configs/models/blip2/blip2_tiny.yaml",
    }

    def __init__(self, blip2: nn.Module, tokenizer, max_txt_len: int = 32):
        super().__init__()
        self.blip2 = blip2
        self.tokenizer = tokenizer
        self.max_txt_len = max_txt_len
        qcfg = blip2.config.qformer_config
        self.itg_head = QFormerLMHead(qcfg.hidden_size, qcfg.vocab_size, qcfg.layer_norm_eps)
        self.itg_head.decoder.weight = blip2.embeddings.word_embeddings.weight  # tied, as in BERT
        self.temp = nn.Parameter(torch.tensor(0.07))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]):
        from transformers import Blip2ForImageTextRetrieval

        source = hf_source(cfg)
        tokenizer = load_tokenizer(cfg.get("tokenizer") or source or "bert-base-uncased")
        if source:
            blip2 = Blip2ForImageTextRetrieval.from_pretrained(source, trust_remote_code=bool(cfg.get("trust_remote_code", False)))
        else:
            blip2 = Blip2ForImageTextRetrieval(build_qformer_config(cfg, tokenizer))
            init_query_tokens(blip2)
        model = cls(blip2, tokenizer, max_txt_len=cfg.get("max_txt_len", 32))
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

    def tokenize(self, texts: List[str]):
        return self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_txt_len,
                              return_tensors="pt").to(self.device)

    def encode_image(self, image: torch.Tensor):
        """``(vit_embeds, query_output)``: the ViT's patch features (after ``ln_vision``)
        and the queries' Q-Former output."""
        vit = self.blip2.vision_model(pixel_values=image).last_hidden_state
        queries = self.blip2.query_tokens.expand(vit.shape[0], -1, -1)
        out = self.blip2.qformer(query_embeds=queries, encoder_hidden_states=vit,
                                 encoder_attention_mask=torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device))
        return vit, out.last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The Q-Former's unimodal text output (no queries, no image)."""
        embeds = self.blip2.embeddings(input_ids=input_ids)
        return self.blip2.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask).last_hidden_state

    def encode_multimodal(self, vit: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          causal_text: bool = False) -> torch.Tensor:
        """Queries and text together, the queries cross-attending to ``vit``; with
        ``causal_text`` the ITG mask (queries see queries; text sees queries and earlier text)."""
        n, q = input_ids.shape[0], self.num_query
        queries = self.blip2.query_tokens.expand(n, -1, -1)
        embeds = self.blip2.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat([torch.ones(n, q, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], 1)
        if causal_text:
            mask = self._itg_mask(mask, q, embeds.dtype)
        return self.blip2.qformer(query_embeds=embeds, query_length=q, attention_mask=mask, encoder_hidden_states=vit,
                                  encoder_attention_mask=torch.ones(vit.shape[:-1], dtype=torch.long, device=vit.device)
                                  ).last_hidden_state

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
        vit, query_output = self.encode_image(image)
        image_feats = self.image_feats(query_output)  # [B, Q, D]
        text_feat = self.text_feat(self.encode_text(text.input_ids, text.attention_mask))  # [B, D]

        # ITC over the global batch
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_feats_all = dist.gather_tensors(image_feats)
        text_feat_all = dist.gather_tensors(text_feat)
        sim_i2t = torch.einsum("iqd,td->itq", image_feats.float(), text_feat_all.float()).max(-1).values / self.temp
        sim_t2i = torch.einsum("td,iqd->tiq", text_feat.float(), image_feats_all.float()).max(-1).values / self.temp
        b = image.shape[0]
        targets = torch.arange(b, device=image.device) + dist.batch_offset(b, image.device)
        loss_itc = (F.cross_entropy(sim_i2t, targets, label_smoothing=0.1)
                    + F.cross_entropy(sim_t2i, targets, label_smoothing=0.1)) / 2

        # ITM with hard negatives
        same = self._same_image(samples, targets, sim_i2t.shape[1])
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

        # ITG
        dec_ids = text.input_ids.clone()
        dec_ids[:, 0] = self.tokenizer.bos_token_id
        hidden = self.encode_multimodal(vit, dec_ids, text.attention_mask, causal_text=True)[:, self.num_query:]
        labels = dec_ids.masked_fill(text.attention_mask == 0, -100)
        lm_logits = self.itg_head(hidden[:, :-1]).float()
        loss_itg = F.cross_entropy(lm_logits.reshape(-1, lm_logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100, label_smoothing=0.1)
        return {"loss": loss_itc + loss_itm + loss_itg, "loss_itc": loss_itc.detach(), "loss_itm": loss_itm.detach(),
                "loss_itg": loss_itg.detach()}

    @staticmethod
    def _same_image(samples: Mapping[str, Any], targets: torch.Tensor, n_all: int) -> torch.Tensor:
        """[B, B_all] True where the pair shows the same image (never a negative)."""
        if "image_id" in samples and torch.is_tensor(samples["image_id"]):
            ids = samples["image_id"].to(targets.device).view(-1)
            ids_all = dist.gather_tensors(ids)
            return ids[:, None] == ids_all[None, :]
        same = torch.zeros(targets.shape[0], n_all, dtype=torch.bool, device=targets.device)
        same[torch.arange(targets.shape[0]), targets] = True
        return same

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
    def extract_features(self, samples: Mapping[str, Any], mode: str = "multimodal") -> Dict[str, torch.Tensor]:
        """LAVIS's features: ``image`` (query outputs and their normalized projections),
        ``text`` ([CLS]-first outputs and the normalized [CLS] projection) or
        ``multimodal`` (the queries' output when they also attend to the text)."""
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        out: Dict[str, torch.Tensor] = {}
        if mode in ("image", "multimodal"):
            vit, query_output = self.encode_image(samples["image"])
            out.update(image_embeds=query_output, image_embeds_proj=self.image_feats(query_output))
        if mode in ("text", "multimodal"):
            text = self.tokenize(samples["text_input"])
            if mode == "text":
                text_output = self.encode_text(text.input_ids, text.attention_mask)
                out.update(text_embeds=text_output, text_embeds_proj=self.text_feat(text_output))
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
        text = self.tokenize(texts)
        return {"ids": text.input_ids, "atts": text.attention_mask,
                "feat": self.text_feat(self.encode_text(text.input_ids, text.attention_mask))}

    @staticmethod
    def retrieval_similarity(image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
        """[n_images, n_texts] ITC similarity (the best query per pair)."""
        return torch.einsum("iqd,td->itq", image_feat.float(), text_feat.float()).max(-1).values

    @torch.no_grad()
    def retrieval_itm_score(self, image_embeds: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor) -> torch.Tensor:
        """Match probability of each (image, text) row pair."""
        return self.itm_logits(self.encode_multimodal(image_embeds, ids, atts)).float().softmax(-1)[:, 1]

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
