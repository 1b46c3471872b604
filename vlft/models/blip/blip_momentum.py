"""Momentum distillation for BLIP's encoder models (LAVIS's ``MomentumDistilationMixin`` and
``SharedQueueMixin``, and the ITC loss of ``blip_retrieval`` / ``blip_pretrain``).

- momentum copies of the ViT, the text encoder and both projections (``momentum_model``),
  updated as ``m = m * momentum + p * (1 - momentum)`` (LAVIS's arithmetic, bit for bit)
  before each training step's momentum features;
- queues of past momentum features (``image_queue``, ``text_queue``: [embed_dim, queue_size],
  normalized random at start; ``idx_queue``: image ids, -100 when empty; ``queue_ptr``),
  filled with every rank's features after the loss;
- ITC: online [CLS] features against the batch's momentum features and the queues, targets
  ``alpha * softmax(momentum sims / temp) + (1 - alpha) * ground truth`` (uniform over the
  same-image columns, or the diagonal), soft cross-entropy both ways, averaged.

The momentum copies are buffers (see ``blip_base``): checkpoints keep them, no optimizer sees
them, and DDP does not broadcast them (every rank updates them identically).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlft.common import dist
from vlft.models.image_ids import image_ids_to_tensor

QUEUE_BUFFERS = ("image_queue", "text_queue", "idx_queue", "queue_ptr")


def global_image_ids(ids: Any, device: torch.device) -> torch.Tensor:
    """``samples["image_id"]`` as int64 codes equal across batches, ranks and runs (see
    vlft/models/image_ids.py): the id queue compares ids of different batches."""
    return image_ids_to_tensor(ids, device)


def buffer_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters are buffers (a momentum encoder: saved with the
    model, never seen by an optimizer or by ``requires_grad`` freezing rules)."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach().clone())
    return clone


def sample_negatives(weights: torch.Tensor) -> torch.Tensor:
    """One column per row drawn in proportion to ``weights`` (one ``multinomial`` call per row,
    in order, as LAVIS, so the RNG stream matches); a row without weight draws uniformly."""
    picks = []
    for row in weights:
        if not bool((row > 0).any()):
            row = torch.ones_like(row)
        picks.append(int(torch.multinomial(row, 1).item()))
    return torch.tensor(picks, dtype=torch.long, device=weights.device)


def same_image_weights(sim: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """LAVIS retrieval's negative-sampling weights: softmax over the candidates, zero where
    the candidate shows the same image."""
    return F.softmax(sim, dim=1).masked_fill(same, 0)


class MomentumDistillation:
    """Mixin for a module holding ``self.blip`` (a ``BlipForImageTextRetrieval``), ``self.temp``,
    ``queue_size``, ``momentum``, ``alpha`` and the encoders of ``BlipEncoderBase``."""

    def init_momentum(self, blip: nn.Module, idx_queue: bool = True) -> None:
        """Momentum copies of ``blip``'s encoders and projections, and the feature queues."""
        self.momentum_model = nn.ModuleDict({name: buffer_copy(getattr(blip, name))
                                             for name in ("vision_model", "text_encoder", "vision_proj", "text_proj")})
        dim = blip.config.image_text_hidden_size
        self.register_buffer("image_queue", F.normalize(torch.randn(dim, self.queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(dim, self.queue_size), dim=0))
        if idx_queue:
            self.register_buffer("idx_queue", torch.full((1, self.queue_size), -100))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        # identical on every rank by construction: no need for DDP to broadcast them each step
        self._ddp_params_and_buffers_to_ignore = [n for n, _ in self.named_buffers()
                                                  if n.startswith("momentum_model.") or n in QUEUE_BUFFERS]

    # ------------------------------------------------------------------ momentum distillation
    def alpha_now(self, samples: Mapping[str, Any]) -> float:
        """``alpha``, ramped up over the first two epochs when the batch says where training is
        (``epoch``, ``iters``, ``num_iters_per_epoch``, as LAVIS's runner adds them)."""
        keys = ("epoch", "iters", "num_iters_per_epoch")
        if all(samples.get(k) is not None for k in keys):
            epoch, iters, per_epoch = (float(samples[k]) for k in keys)
            return self.alpha * min(1.0, (epoch * per_epoch + iters) / (2 * per_epoch))
        return self.alpha

    def _momentum_pairs(self):
        """(online parameter, its momentum buffer) pairs, matched by name; names only one side
        has (adapters such as LoRA, which a momentum copy does not train) are skipped."""
        for name, module in self.momentum_model.items():
            buffers = dict(module.named_buffers())
            for key, param in getattr(self.blip, name).named_parameters():
                if key in buffers:
                    yield param, buffers[key]

    @torch.no_grad()
    def copy_to_momentum(self) -> None:
        """Momentum encoders := the online ones (after loading weights that lack them)."""
        for param, target in self._momentum_pairs():
            target.copy_(param)

    @torch.no_grad()
    def momentum_update(self) -> None:
        for param, target in self._momentum_pairs():
            target.copy_(target * self.momentum + param * (1.0 - self.momentum))  # LAVIS's arithmetic, exactly

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, idx: Optional[torch.Tensor] = None) -> None:
        """Write every rank's momentum features (and image ids) at the queue pointer."""
        image_feats, text_feats = dist.gather_tensors(image_feat), dist.gather_tensors(text_feat)
        n, ptr = image_feats.shape[0], int(self.queue_ptr)
        cols = (torch.arange(n, device=image_feats.device) + ptr) % self.queue_size
        self.image_queue[:, cols] = image_feats.t().to(self.image_queue.dtype)
        self.text_queue[:, cols] = text_feats.t().to(self.text_queue.dtype)
        if idx is not None and hasattr(self, "idx_queue"):
            self.idx_queue[:, cols] = dist.gather_tensors(idx.view(-1)).view(1, -1)
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    def itc_step(self, samples: Mapping[str, Any], idx: Optional[torch.Tensor]):
        """The start that BLIP's pre-training and retrieval steps share: LAVIS's in-place
        temperature clamp, both unimodal encoders, then :meth:`itc_loss`. Returns
        ``(image_embeds, image_feat, text, text_feat, (loss_itc, sim_i2t, sim_t2i))``."""
        image = samples["image"]
        alpha = self.alpha_now(samples)
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_embeds = self.encode_image(image)
        image_feat = self.image_feat(image_embeds)
        text = self.tokenize(samples["text_input"])
        text_feat = self.text_feat(self.encode_text(text.input_ids, text.attention_mask))
        itc = self.itc_loss(image, text, image_feat, text_feat, idx, alpha)
        return image_embeds, image_feat, text, text_feat, itc

    def itc_loss(self, image: torch.Tensor, text, image_feat: torch.Tensor, text_feat: torch.Tensor,
                 idx: Optional[torch.Tensor], alpha: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LAVIS's ITC: online features against the momentum features of the batch and the
        queue, targets distilled from the momentum similarities; without a queue, in-batch.
        ``idx`` None: only the diagonal is positive. Returns (loss, sim_i2t, sim_t2i)."""
        b = image_feat.shape[0]
        if self.queue_size <= 0:
            sim_i2t, sim_t2i = image_feat @ text_feat.t() / self.temp, text_feat @ image_feat.t() / self.temp
            targets = _targets(idx, None, b, b, image_feat.device)
            loss = (_soft_ce(sim_i2t, targets) + _soft_ce(sim_t2i, targets)) / 2
            return loss, sim_i2t, sim_t2i
        idx_queue = getattr(self, "idx_queue", None) if idx is not None else None
        targets = _targets(idx, idx_queue, b, b + self.queue_size, image_feat.device)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            image_feat_m = self.image_feat(self.encode_image(image, momentum=True), momentum=True)
            image_feat_m_all = torch.cat([image_feat_m.t(), self.image_queue.clone().detach()], dim=1)
            text_feat_m = self.text_feat(self.encode_text(text.input_ids, text.attention_mask, momentum=True), momentum=True)
            text_feat_m_all = torch.cat([text_feat_m.t(), self.text_queue.clone().detach()], dim=1)
            sim_i2t_m, sim_t2i_m = image_feat_m @ text_feat_m_all / self.temp, text_feat_m @ image_feat_m_all / self.temp
            i2t_targets = alpha * F.softmax(sim_i2t_m, dim=1) + (1 - alpha) * targets
            t2i_targets = alpha * F.softmax(sim_t2i_m, dim=1) + (1 - alpha) * targets
        sim_i2t, sim_t2i = image_feat @ text_feat_m_all / self.temp, text_feat @ image_feat_m_all / self.temp
        loss = (_soft_ce(sim_i2t, i2t_targets) + _soft_ce(sim_t2i, t2i_targets)) / 2
        if self.training:
            self.enqueue(image_feat_m, text_feat_m, idx)
        return loss, sim_i2t, sim_t2i

    def reset_queue_ptr(self) -> None:
        if hasattr(self, "queue_ptr"):
            self.queue_ptr.zero_()

def _targets(idx: Optional[torch.Tensor], idx_queue: Optional[torch.Tensor], b: int, n: int,
             device: torch.device) -> torch.Tensor:
    """[b, n] ground-truth ITC distribution: uniform over the same-image columns (LAVIS's
    ``pos_idx / pos_idx.sum(1)``), or the diagonal without ids."""
    if idx is None:
        targets = torch.zeros(b, n, device=device)
        targets[:, :b] = torch.eye(b, device=device)
        return targets
    idx = idx.view(-1, 1)
    idx_all = idx.t() if idx_queue is None else torch.cat([idx.t(), idx_queue.clone().detach()], dim=1)
    if idx_all.shape[1] < n:  # a queue without ids: its columns are never positives
        idx_all = torch.cat([idx_all, torch.full((1, n - idx_all.shape[1]), -100, device=device, dtype=idx_all.dtype)], 1)
    pos = torch.eq(idx, idx_all).float()
    return pos / pos.sum(1, keepdim=True)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.sum(F.log_softmax(logits, dim=1) * targets, dim=1).mean()
