"""Captioning data streamed from webdataset tar shards.

A shard holds samples as files sharing a key: ``000123.jpg`` + ``000123.txt`` (the
caption) or ``000123.json`` (``{"caption": ...}``). The stream is an
``IterableDataset``: shards are shuffled per epoch by ``(seed, epoch)`` (the same
order on every rank), split by node then by DataLoader worker (webdataset's
``split_by_node`` / ``split_by_worker``), read, optionally shuffled in a buffer, and
decoded here with ``load_image``.

A sample whose image cannot be read is not yielded: it is warned about, counted in
``skipped`` (per process) and the count rides on the next good item of the same
worker as ``"_skipped"``; ``collater`` sums those into the batch's ``n_skipped``, the
key vlft's ``SkipCounter`` reads. ``num_samples`` is the split's nominal size: a
stream has no length of its own, so ``len()`` is this rank's share of it.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import webdataset as wds
from torch.utils.data import IterableDataset
from torch.utils.data.dataloader import default_collate

from vlft.common.utils import resolve_data_path
from vlft.datasets.caption_sources import option
from vlft.datasets.image_io import load_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = "jpg;jpeg;png;webp;bmp"


def shard_urls(storage: Any, run_cfg: Mapping[str, Any], split: str) -> List[str]:
    """Shard list from a brace pattern (``shards/train-{000..009}.tar``) or a list of them;
    local paths are resolved like other data paths and must exist."""
    if not storage:
        raise ValueError(f"wds_caption: build_info.annotations.{split}.storage (tar shards, e.g. "
                         "'shards/train-{000000..000009}.tar' or a list) is not set")
    patterns = [storage] if isinstance(storage, (str, Path)) else list(storage)
    urls = []
    for pattern in patterns:
        for url in wds.shardlists.expand_urls(str(pattern)):
            if "://" in url or url.startswith("pipe:"):
                urls.append(url)  # remote or piped shards are opened by webdataset itself
                continue
            path = resolve_data_path(url, run_cfg)
            if not path.is_file():
                raise FileNotFoundError(f"wds_caption: shard '{url}' of split '{split}' not found (looked at {path})")
            urls.append(str(path))
    return urls


class WebDatasetCaptions(IterableDataset):
    """Streamed (image, caption) items from tar shards; see the module docstring."""

    def __init__(self, vis_processor=None, text_processor=None, split: str = "train",
                 info: Optional[Mapping[str, Any]] = None, build_info: Optional[Mapping[str, Any]] = None,
                 run_cfg: Optional[Mapping[str, Any]] = None):
        info, build_info, run_cfg = info or {}, build_info or {}, run_cfg or {}
        self.vis_processor, self.text_processor, self.split = vis_processor, text_processor, split
        self.is_train = split == "train"
        self.urls = shard_urls(info.get("storage"), run_cfg, split)
        num_samples = option("num_samples", info, build_info)
        self.num_samples = int(num_samples) if num_samples is not None else None
        self.image_keys = [k.strip().lower() for k in str(option("image_key", info, build_info, IMAGE_EXTENSIONS)).split(";")]
        self.caption_key = str(option("caption_key", info, build_info, "txt")).lower()
        self.json_caption_field = option("json_caption_field", info, build_info, "caption")
        self.shuffle_buffer = int(option("shuffle_buffer", info, build_info, 1000 if self.is_train else 0))
        self.repeat = bool(option("repeat", info, build_info, False))
        self.seed = int(option("seed", info, build_info, run_cfg.get("seed", 0) or 0))
        self.epoch = 0
        self.skipped = 0  # in this process; workers count their own (see collater)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: the shard order and the sample buffer depend on (seed, epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError(f"wds_caption split '{self.split}' has no length: set "
                            f"build_info.annotations.{self.split}.num_samples (its number of samples)")
        _, world, _, _ = wds.utils.pytorch_worker_info()
        return -(-self.num_samples // world)  # this rank's share, rounded up

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        epoch = self.epoch
        while True:
            yield from self._one_pass(epoch)
            if not self.repeat:
                return
            epoch += 1

    def _one_pass(self, epoch: int) -> Iterator[Dict[str, Any]]:
        urls = list(self.urls)
        if self.is_train:  # same permutation on every rank, so split_by_node stays disjoint
            random.Random(self.seed * 1_000_003 + epoch).shuffle(urls)
        shards = list(wds.split_by_worker(wds.split_by_node([{"url": u} for u in urls])))
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if not shards:
            logger.warning("wds_caption: %d shard(s) for %d rank(s) x %d worker(s): rank %d worker %d reads nothing; "
                           "write at least that many shards", len(urls), world, workers, rank, worker)
            return
        samples = wds.tarfile_to_samples(handler=wds.warn_and_continue)(iter(shards))
        rng = random.Random(hash((self.seed, epoch, rank, worker)))
        if self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, min(100, self.shuffle_buffer), rng=rng)(iter(samples))
        pending = 0
        for sample in samples:
            item = self._item(sample, rng)
            if item is None:
                pending += 1
                self.skipped += 1
                continue
            item["_skipped"], pending = pending, 0
            yield item

    def _item(self, sample: Mapping[str, Any], rng: random.Random) -> Optional[Dict[str, Any]]:
        key, url = sample.get("__key__"), sample.get("__url__")
        entries = {k.lower(): v for k, v in sample.items() if not k.startswith("__")}
        ext = next((e for e in self.image_keys if e in entries), None)
        captions = self._captions(entries, key, url)
        name = f"{url}:{key}.{ext}"
        if ext is None or captions is None:
            logger.warning("wds_caption: sample %s in %s lacks %s (it has: %s); skipped", key, url,
                           "an image (" + "/".join(self.image_keys) + ")" if ext is None else f"a caption ('{self.caption_key}')",
                           ", ".join(entries))
            return None
        image = load_image(entries[ext], name=name)
        if image is None:
            return None
        image = self.vis_processor(image) if self.vis_processor is not None else image
        if not self.is_train:
            return {"image": image, "image_id": key, "instance_id": key}
        caption = rng.choice(captions) if len(captions) > 1 else captions[0]
        caption = self.text_processor(caption) if self.text_processor is not None else caption
        return {"image": image, "text_input": caption, "image_id": key, "instance_id": key}

    def _captions(self, entries: Mapping[str, Any], key: str, url: str) -> Optional[List[str]]:
        raw = entries.get(self.caption_key)
        if raw is None:
            return None
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
        if self.caption_key.endswith("json"):
            try:
                value = json.loads(text).get(self.json_caption_field)
            except (json.JSONDecodeError, AttributeError):
                value = None
            if value is None:
                return None
            return [str(v) for v in value] if isinstance(value, list) else [str(value)]
        return [text.strip()]

    def ground_truth(self) -> Dict[str, List[str]]:
        """``key -> [raw captions]`` of the whole split (all shards, every rank), read
        without decoding images: the references for scoring an eval split."""
        refs: Dict[str, List[str]] = {}
        for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)(iter([{"url": u} for u in self.urls])):
            entries = {k.lower(): v for k, v in sample.items() if not k.startswith("__")}
            captions = self._captions(entries, sample.get("__key__"), sample.get("__url__"))
            if captions is not None:
                refs[sample["__key__"]] = captions
        return refs

    @staticmethod
    def collater(batch: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
        """``default_collate`` plus ``n_skipped``: the unreadable samples streamed past
        since the previous item of each worker (and any ``None`` in the batch)."""
        good = [b for b in batch if b is not None]
        n_skipped = len(batch) - len(good) + sum(int(b.pop("_skipped", 0)) for b in good)
        out = default_collate(good) if good else {}
        out["n_skipped"] = n_skipped
        return out

    def __repr__(self) -> str:
        return (f"WebDatasetCaptions(split={self.split!r}, shards={len(self.urls)}, "
                f"num_samples={self.num_samples}, skipped_here={self.skipped})")
