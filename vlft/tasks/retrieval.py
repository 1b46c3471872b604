"""Task ``retrieval``: image-text retrieval scored as LAVIS reports it.

For every image the ``k_test`` texts most similar by ITC (and for every text the
``k_test`` most similar images) are re-scored with ``ITM match logit + ITC
similarity``; every other pair keeps -100. Recall@1/5/10 both ways, their means,
``r_mean`` and ``agg_metrics = txt_r_mean`` (as LAVIS) come from ``vlft.metrics.retrieval``.

Distributed: each rank embeds its shard of the images and of the texts; the small
projected features are gathered, so every rank has the full ITC matrix; a rank then
runs ITM only on the pairs whose image it embedded (no rank ever holds another rank's
ViT features), and the score matrices are summed over ranks.

The model provides ``retrieval_image_features(image) -> {"embeds", "feat"}``,
``retrieval_text_features(texts) -> {"ids", "atts", "feat"}``,
``retrieval_similarity(image_feat, text_feat) -> [n_images, n_texts]`` and
``retrieval_itm_score(image_embeds, ids, atts) -> [n]`` (see ``blip2``).
The evaluated dataset gives ``text``, ``img2txt`` and ``txt2img`` and items with ``index``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from vlft.common import dist
from vlft.common.registry import registry
from vlft.tasks.base_task import BaseTask

logger = logging.getLogger(__name__)


@registry.register_task("retrieval")
class RetrievalTask(BaseTask):
    RUN_OPTIONS = {"k_test": 128, "text_batch_size": 256, "itm_batch_size": 128}
    result_key = None

    def __init__(self, k_test: int = 128, text_batch_size: int = 256, itm_batch_size: int = 128):
        super().__init__()
        self.k_test, self.text_batch_size, self.itm_batch_size = k_test, text_batch_size, itm_batch_size

    @torch.no_grad()
    def evaluation(self, model, data_loader, progress=None, dataset=None) -> List[Dict[str, Any]]:
        if dataset is None or not hasattr(dataset, "txt2img"):
            raise TypeError("retrieval needs an evaluation dataset with text / img2txt / txt2img "
                            "(coco_retrieval, flickr30k or retrieval_custom)")
        # this rank's images
        embeds, feats, indices = [], [], []
        for samples in (progress(data_loader) if progress else data_loader):
            out = model.retrieval_image_features(samples["image"])
            embeds.append(out["embeds"])
            feats.append(out["feat"])
            indices.extend(int(i) for i in samples["index"])
        device = next(model.parameters()).device
        n_img, n_txt = len(dataset), len(dataset.text)
        image_feat = torch.zeros(0, device=device)
        if feats:
            image_feat = torch.cat(feats)
        own_embeds = torch.cat(embeds) if embeds else None
        row_of = {idx: row for row, idx in enumerate(indices)}  # image index -> row in own_embeds
        # every rank's image features, in image-index order
        gathered = dist.all_gather_object((indices, image_feat.cpu()))
        all_feat = torch.zeros((n_img,) + tuple(next(f for _, f in gathered if f.numel()).shape[1:]))
        for idx, feat in gathered:
            if idx:
                all_feat[torch.tensor(idx)] = feat.float()  # bf16 under autocast; kept in fp32 here
        all_feat = all_feat.to(device)
        # texts: each rank encodes a contiguous slice, then all ranks share ids and features
        text = self._text_features(model, dataset.text)
        sim = model.retrieval_similarity(all_feat, text["feat"])  # [n_img, n_txt]

        score_i2t = torch.full((n_img, n_txt), -100.0, device=device)
        score_t2i = torch.full((n_txt, n_img), -100.0, device=device)
        k_txt, k_img = min(self.k_test, n_txt), min(self.k_test, n_img)
        # run.use_dist_eval_sampler: false gives every rank every image: each image's ITM
        # pairs go to one of the ranks that hold it, so no pair is scored (and summed) twice
        holders: Dict[int, List[int]] = {}
        for r, (idx, _) in enumerate(gathered):
            for i in idx:
                holders.setdefault(i, []).append(r)
        mine_only = [i for i in indices if holders[i][i % len(holders[i])] == dist.get_rank()]
        own = torch.tensor(mine_only, dtype=torch.long, device=device)
        pairs = []  # (image index, text index, which matrix)
        if own.numel():
            top_txt = sim[own].topk(k_txt, dim=1).indices
            pairs += [(int(i), int(t), 0) for i, row in zip(own.tolist(), top_txt.tolist()) for t in row]
        top_img = sim.t().topk(k_img, dim=1).indices  # [n_txt, k]
        mine = torch.isin(top_img, own) if own.numel() else torch.zeros_like(top_img, dtype=torch.bool)
        pairs += [(int(top_img[t, j]), t, 1) for t, j in mine.nonzero().tolist()]
        for start in range(0, len(pairs), self.itm_batch_size):
            part = pairs[start:start + self.itm_batch_size]
            img = torch.tensor([i for i, _, _ in part], device=device)
            txt = torch.tensor([t for _, t, _ in part], device=device)
            rows = torch.tensor([row_of[i] for i, _, _ in part], device=device)
            score = model.retrieval_itm_score(own_embeds[rows], text["ids"][txt], text["atts"][txt]).float()
            score = score + sim[img, txt]
            which = torch.tensor([w for _, _, w in part], device=device)
            score_i2t[img[which == 0], txt[which == 0]] = score[which == 0]
            score_t2i[txt[which == 1], img[which == 1]] = score[which == 1]
        if dist.is_dist():  # each pair was scored on exactly one rank: sum the scored values, exactly
            for matrix in (score_i2t, score_t2i):
                scored = (matrix != -100.0).float()
                values = matrix * scored
                dist.all_reduce_sum(values)
                dist.all_reduce_sum(scored)
                matrix.copy_(torch.where(scored > 0, values, torch.full_like(values, -100.0)))
        return [{"score_i2t": score_i2t.cpu().numpy(), "score_t2i": score_t2i.cpu().numpy()}]

    def _text_features(self, model, texts: List[str]) -> Dict[str, torch.Tensor]:
        rank, world = dist.get_rank(), dist.get_world_size()
        per = -(-len(texts) // world)
        mine = texts[rank * per:(rank + 1) * per]
        parts = []
        for start in range(0, len(mine), self.text_batch_size):
            out = model.retrieval_text_features(mine[start:start + self.text_batch_size])
            parts.append({k: v.cpu() for k, v in out.items()})
        shards = dist.all_gather_object(parts)
        device = next(model.parameters()).device
        pieces = [p for shard in shards for p in shard]
        width = max(p["ids"].shape[1] for p in pieces)  # texts are padded per batch
        pad = getattr(model.tokenizer, "pad_token_id", 0) or 0
        ids = torch.cat([torch.nn.functional.pad(p["ids"], (0, width - p["ids"].shape[1]), value=pad) for p in pieces])
        atts = torch.cat([torch.nn.functional.pad(p["atts"], (0, width - p["atts"].shape[1])) for p in pieces])
        return {"ids": ids.to(device), "atts": atts.to(device), "feat": torch.cat([p["feat"] for p in pieces]).to(device)}

    def after_evaluation(self, results, split_name: str, epoch: Any, output_dir: Optional[Path] = None,
                         dataset=None) -> Dict[str, float]:
        from vlft.metrics.retrieval import retrieval_metrics

        scores = results[0]
        return retrieval_metrics(scores["score_i2t"], scores["score_t2i"], dataset.img2txt, dataset.txt2img)

    @staticmethod
    def save_results(results, output_dir: Optional[Path], name: str) -> Optional[Path]:
        """The top-10 ranking of every image and every text (the score matrices are too
        big to keep)."""
        if output_dir is None or not dist.is_main_process() or not results:
            return None
        scores = results[0]
        top = lambda m: (-m).argsort(axis=1, kind="stable")[:, :10].tolist()  # noqa: E731
        path = Path(output_dir) / "result" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"image_to_text_top10": top(scores["score_i2t"]),
                                    "text_to_image_top10": top(scores["score_t2i"])}))
        return path
