"""BLIP image-text retrieval (``blip_retrieval``), matching (``blip_image_text_matching``)
and feature extraction (``blip_feature_extractor``).

Paper: Li et al., "BLIP", ICML 2022. Reference code: LAVIS's ``blip_retrieval``,
``blip_image_text_matching`` and ``blip_feature_extractor``; built on transformers'
``BlipForImageTextRetrieval`` (see ``blip_base`` for what is shared, the checkpoint formats
and every difference from LAVIS).

Training (``forward``), as LAVIS's ``BlipRetrieval.forward``:

- ITC with momentum distillation: online [CLS] features against the momentum features of
  the batch and of the queues; the ground truth is uniform over the columns showing the
  same image (``samples["image_id"]``, also across the id queue); targets
  ``alpha * softmax(momentum sims) + (1 - alpha) * ground truth``, ``alpha`` ramped up over
  two epochs when the batch carries ``epoch`` / ``iters`` / ``num_iters_per_epoch``
  (vlft's runners do not add them: then ``alpha`` is used as it is);
- ITM: the positive pairs, plus for each text a negative image and for each image a
  negative text, drawn from ``softmax(in-batch ITC sims / temp)`` with same-image pairs
  zeroed (from every rank's batch with ``negative_all_rank``); text with [ENC];
- ``loss = loss_itc + loss_itm``.

Evaluation: the ``retrieval`` task's interface (``retrieval_image_features`` ...), scoring as
LAVIS's ``compute_sim_matrix``. ``model(samples, match_head="itm" | "itc")`` scores pairs as
LAVIS's ``BlipITM``; ``extract_features`` as ``BlipFeatureExtractor``. The matching and
feature-extraction types train without momentum distillation (``queue_size: 0``).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from vlft.common import dist
from vlft.common.registry import registry
from vlft.models.blip.blip_base import BlipEncoderBase
from vlft.models.blip.blip_momentum import global_image_ids, same_image_weights


@registry.register_model("blip_retrieval")
class BlipRetrieval(BlipEncoderBase):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "coco": "configs/models/blip/retrieval_coco.yaml",
        "flickr": "configs/models/blip/retrieval_flickr.yaml",
        "tiny": "configs/models/blip/retrieval_tiny.yaml",
    }
    CONFIG_KEYS = ("alpha", "momentum", "negative_all_rank")  # beyond the default YAMLs
    DEFAULT_QUEUE_SIZE = 57600

    def __init__(self, blip, tokenizer, max_txt_len: int = 35, queue_size: int = 57600, alpha: float = 0.4,
                 momentum: float = 0.995, negative_all_rank: bool = False):
        """``blip``: a transformers ``BlipForImageTextRetrieval``. ``queue_size`` 0 trains
        without momentum encoders and queues."""
        super().__init__(blip, tokenizer, max_txt_len=max_txt_len, queue_size=queue_size, alpha=alpha,
                         momentum=momentum, idx_queue=True)
        self.negative_all_rank = bool(negative_all_rank)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "BlipRetrieval":
        blip, tokenizer = cls.build_blip(cfg)
        model = cls(blip, tokenizer, max_txt_len=cfg.get("max_txt_len", 35),
                    queue_size=cfg.get("queue_size", cls.DEFAULT_QUEUE_SIZE), alpha=cfg.get("alpha", 0.4),
                    momentum=cfg.get("momentum", 0.995), negative_all_rank=cfg.get("negative_all_rank", False))
        return model.finish_from_config(cfg)

    def forward(self, samples: Mapping[str, Any], match_head: Optional[str] = None):
        """Training losses ``{"loss", "loss_itc", "loss_itm"}``; with ``match_head`` the
        scores of ``match`` instead."""
        if match_head is not None:
            return self.match(samples, match_head)
        image = samples["image"]
        if samples.get("image_id") is None:
            raise KeyError(f"{type(self).__name__} trains on samples['image_id'] (which captions show the same "
                           "image); the batch has none (keys: " + ", ".join(samples) + ")")
        idx = global_image_ids(samples["image_id"], image.device)
        image_embeds, image_feat, text, text_feat, (loss_itc, _, _) = self.itc_step(samples, idx)

        enc_ids = self.with_enc(text.input_ids)
        world = None
        with torch.no_grad():
            if self.negative_all_rank:
                same = idx.view(-1, 1) == dist.gather_tensors(idx).view(1, -1)
                image_feat_world, text_feat_world = dist.gather_tensors(image_feat), dist.gather_tensors(text_feat)
                sim_i2t, sim_t2i = image_feat @ text_feat_world.t() / self.temp, text_feat @ image_feat_world.t() / self.temp
            else:
                same = idx.view(-1, 1) == idx.view(1, -1)
                sim_i2t, sim_t2i = image_feat @ text_feat.t() / self.temp, text_feat @ image_feat.t() / self.temp
            weights_i2t, weights_t2i = same_image_weights(sim_i2t, same), same_image_weights(sim_t2i, same)
        if self.negative_all_rank:  # the negative image's ViT features keep their gradient
            world = (dist.gather_tensors(image_embeds, with_grad=True), dist.gather_tensors(enc_ids),
                     dist.gather_tensors(text.attention_mask))
        loss_itm = self.itm_loss(image_embeds, enc_ids, text.attention_mask, weights_t2i, weights_i2t, world)
        return {"loss": loss_itc + loss_itm, "loss_itc": loss_itc.detach(), "loss_itm": loss_itm.detach()}


@registry.register_model("blip_image_text_matching")
class BlipImageTextMatching(BlipRetrieval):
    """``model(samples, match_head="itm")`` gives [B, 2] match logits, ``"itc"`` the
    [n_images, n_texts] cosine similarities (LAVIS's ``BlipITM``); without ``match_head`` it
    trains like ``blip_retrieval`` (by default without momentum distillation)."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": "configs/models/blip/itm_base.yaml",
        "large": "configs/models/blip/itm_large.yaml",
        "tiny": "configs/models/blip/itm_tiny.yaml",
    }
    DEFAULT_QUEUE_SIZE = 0


@registry.register_model("blip_feature_extractor")
class BlipFeatureExtractor(BlipRetrieval):
    """``extract_features(samples, mode="image" | "text" | "multimodal")`` (LAVIS's
    ``BlipFeatureExtractor``); trains like ``blip_image_text_matching``."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": "configs/models/blip/feature_extractor_base.yaml",
        "large": "configs/models/blip/feature_extractor_large.yaml",
        "tiny": "configs/models/blip/feature_extractor_tiny.yaml",
    }
    DEFAULT_QUEUE_SIZE = 0


def retrieval_scores(model: BlipEncoderBase, image: torch.Tensor, texts) -> Dict[str, torch.Tensor]:
    """The ITC similarity and ITM logit of every image with every text, computed densely as
    LAVIS's ``compute_sim_matrix`` would for ``k_test`` >= both counts (a reference for tests
    and small evaluations)."""
    img = model.retrieval_image_features(image)
    txt = model.retrieval_text_features(list(texts))
    sim = model.retrieval_similarity(img["feat"], txt["feat"])
    n_img, n_txt = sim.shape
    itm = model.retrieval_itm_score(img["embeds"].repeat_interleave(n_txt, 0), txt["ids"].repeat(n_img, 1),
                                    txt["atts"].repeat(n_img, 1)).view(n_img, n_txt)
    return {"sim": sim, "itm": itm, "score": itm.float() + sim}
