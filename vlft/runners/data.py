"""Data loading that can stop anywhere and resume exactly.

- ``ResumableSampler``: torch's ``DistributedSampler`` order (seeded by seed + pass,
  padded to the world size, one shard per rank) that can start mid-pass.
- ``SeededSamples``: each sample's random augmentation is drawn from an RNG seeded by
  (seed, pass, index), so it does not depend on the number of workers, on which
  worker loaded it, or on where a run was interrupted.
- ``SkippingCollate`` / ``SkipCounter``: a sample whose image cannot be read comes back
  as ``None``, is dropped from its batch and counted; a bad fraction confidently over
  ``run.max_bad_sample_fraction`` stops the run.
- ``MicroBatchStream``: the training stream as global micro-batch numbers. A pass over
  the data holds ``micro_per_pass`` micro-batches; micro-batch ``m`` is batch
  ``m % micro_per_pass`` of pass ``m // micro_per_pass``.
"""
from __future__ import annotations

import itertools
import math
import random
from statistics import NormalDist
from typing import Any, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import ChainDataset, ConcatDataset, DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler
from torch.utils.data.dataloader import default_collate


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's shard in the current pass."""
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler):
    """Evaluation: rank r gets indices r, r+W, ...: no padding, so no duplicates to remove."""

    def __init__(self, length: int, num_replicas: int, rank: int):
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


_PLAIN = (str, bytes, int, float, bool, list, dict, tuple, set, np.ndarray, torch.Tensor)


def uses_global_rng(dataset: Any) -> bool:
    """Whether ``dataset``, a dataset inside it (``ConcatDataset``, a ratio mix) or one
    of its attributes (its processors) declares ``uses_global_rng = True``: it draws from
    Python's ``random`` or numpy's global RNG, not only torch's (torchvision's v2
    transforms and vlft's own augmentations draw from torch's)."""
    seen, todo = set(), [dataset]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if getattr(obj, "uses_global_rng", False):
            return True
        if isinstance(obj, Dataset):  # look inside datasets only, one level into the rest
            parts = getattr(obj, "datasets", None)
            todo.extend(parts.values() if isinstance(parts, dict) else parts or [])
            todo.extend(v for v in getattr(obj, "__dict__", {}).values() if not isinstance(v, _PLAIN))
    return False


class SeededSamples(Dataset):
    """Draws each sample's augmentation from its own seed, ``hash((seed, pass, index))``.

    Torch's CPU generator is reseeded for every sample. Python's ``random`` and numpy's
    global RNG only when the dataset declares ``uses_global_rng`` (saving and restoring
    numpy's 2.5 kB state costs ~70 us a batch, which a training step pays in the main
    process). In the main process (``num_workers: 0``) the states are saved and restored
    once per batch, so data loading leaves the training stream (dropout) as it found it;
    a worker process owns its RNGs and skips that."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.global_rng = uses_global_rng(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: List[int]) -> List[Any]:
        """One batch (the DataLoader calls this once per batch)."""
        seed, epoch, dataset, global_rng = self.seed, self.epoch, self.dataset, self.global_rng
        # the CPU generator only: torch.manual_seed would also (slowly) reseed CUDA's
        gen = torch.default_generator
        restore = torch.utils.data.get_worker_info() is None
        if restore:
            torch_state = gen.get_state()
            if global_rng:
                py_state, np_state = random.getstate(), np.random.get_state()
        try:
            out = []
            for index in indices:
                s = hash((seed, epoch, int(index))) % 2**31
                gen.manual_seed(s)
                if global_rng:
                    random.seed(s)
                    np.random.seed(s)
                out.append(dataset[index])
            return out
        finally:
            if restore:
                gen.set_state(torch_state)
                if global_rng:
                    random.setstate(py_state)
                    np.random.set_state(np_state)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]


class SkippingCollate:
    """Drops samples a dataset returned as ``None`` (an unreadable image) and records how
    many in the batch's ``n_skipped``, so the main process can count them across workers."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, batch: List[Any]) -> Any:
        good = [b for b in batch if b is not None]
        out = self.collate(good) if good else {}
        if isinstance(out, dict):  # a streaming dataset's collater may have counted some already
            out["n_skipped"] = out.get("n_skipped", 0) + len(batch) - len(good)
        return out


def collate_fn_of(dataset: Dataset):
    while isinstance(dataset, (SeededSamples, ConcatDataset, ChainDataset)):
        dataset = dataset.dataset if isinstance(dataset, SeededSamples) else dataset.datasets[0]
    return SkippingCollate(getattr(dataset, "collater", None) or default_collate)


class BadDataError(RuntimeError):
    pass


def wilson_lower_bound(bad: int, seen: int, z: float = 2.326) -> float:
    """One-sided lower confidence bound of a binomial fraction (Wilson score interval;
    z = 2.326 is 99%): the true bad fraction is at least this, 99 times in 100."""
    if seen == 0:
        return 0.0
    p = bad / seen
    centre = p + z * z / (2 * seen)
    spread = z * math.sqrt(p * (1 - p) / seen + z * z / (4 * seen * seen))
    return max(0.0, (centre - spread) / (1 + z * z / seen))


class SkipCounter:
    """Counts skipped samples and stops the run when the data is *confidently* worse
    than ``limit``: after at least ``min_seen`` samples, when the lower bound of a
    one-sided Wilson interval of the bad fraction exceeds ``limit``. The bound is 99%
    at first; since it is checked after every batch, each doubling of the samples seen
    tightens it (confidence 1 - 0.01 / (k + 1)^2 after 2^k x ``min_seen`` samples), so
    a long run is not stopped by a chance excursion either. A set with exactly
    ``limit`` bad samples then rarely stops (64 samples with 4 bad are 6% but say
    little), while one at twice the limit stops within a few hundred samples.
    ``limit`` 0 stops at the first unreadable sample."""

    def __init__(self, limit: float, min_seen: int = 200):
        self.limit, self.min_seen = limit, min_seen
        self.seen = self.skipped = 0

    def update(self, batch: Any) -> bool:
        """Count one batch; False when none of its samples could be read."""
        n = int(batch.pop("n_skipped", 0)) if isinstance(batch, dict) else 0
        good = batch_len(batch)
        self.seen += good + n
        self.skipped += n
        if n and self.too_many():
            raise BadDataError(
                f"{self.skipped} of {self.seen} samples so far ({100 * self.skipped / self.seen:.1f}%) could not be "
                f"read: at least {100 * self.lower_bound():.1f}% of the data is bad (99% confidence), over "
                f"run.max_bad_sample_fraction={self.limit}; see the warnings above for the files, fix or remove "
                "them, or raise the limit"
            )
        return good > 0

    def lower_bound(self) -> float:
        doublings = int(math.log2(max(self.seen, self.min_seen) / self.min_seen))
        z = NormalDist().inv_cdf(1 - 0.01 / (doublings + 1) ** 2)
        return wilson_lower_bound(self.skipped, self.seen, z)

    def too_many(self) -> bool:
        if self.limit <= 0:
            return self.skipped > 0
        return self.seen >= self.min_seen and self.lower_bound() > self.limit


def batch_len(batch: Any) -> int:
    """Samples in a collated batch (the length of its first tensor or list)."""
    values = batch.values() if isinstance(batch, dict) else [batch]
    for v in values:
        if torch.is_tensor(v) and v.dim() > 0:
            return v.shape[0]
        if isinstance(v, (list, tuple)):
            return len(v)
    return 0


def concat(datasets: List[Dataset]) -> Dataset:
    if len(datasets) == 1:
        return datasets[0]
    streaming = [isinstance(d, IterableDataset) for d in datasets]
    if all(streaming):
        return ChainDataset(datasets)
    if any(streaming):
        raise ValueError("training on indexed and streaming (webdataset) datasets together is not supported")
    return ConcatDataset(datasets)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, rank: int, world: int,
                shard: bool = True) -> DataLoader:
    """This rank's evaluation batches: its shard of the split, or with ``shard=False``
    (``run.use_dist_eval_sampler: false``, as LAVIS) the whole split on every rank.
    Workers are persistent: the runner keeps one loader per split, so that each
    validation reuses them instead of starting processes again."""
    # a streaming dataset splits itself by rank and worker; an indexed one is sharded here
    sampler = None
    if not isinstance(dataset, IterableDataset):
        sampler = ShardSampler(len(dataset), world, rank) if shard else ShardSampler(len(dataset), 1, 0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn_of(dataset), drop_last=False, persistent_workers=num_workers > 0,
                      # its own generator: the workers' base seed is never drawn from the global RNG, which
                      # a persistent loader would otherwise do once, not at every validation (exact resume)
                      generator=torch.Generator().manual_seed(0))


class MicroBatchStream:
    """Training micro-batches from global micro-batch number ``start`` onwards.

    A streaming (webdataset) dataset has no indices: it shuffles and splits itself by
    rank and worker, its nominal length (``num_samples``) sets the pass length, it
    repeats so every rank fills its pass, and resuming mid-pass reads and discards the
    batches already trained on (the order is reproduced; random augmentations are not).
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int, rank: int, world: int, seed: int,
                 micro_per_pass: Optional[int] = None, max_bad_fraction: float = 0.05):
        self.skips = SkipCounter(max_bad_fraction)
        self.streaming = isinstance(dataset, IterableDataset)
        self.batch_size, self.num_workers = batch_size, num_workers
        if self.streaming:
            self.samples = dataset
            for part in getattr(dataset, "datasets", [dataset]):
                if hasattr(part, "repeat"):
                    part.repeat = True
            per_rank = len(dataset)
        else:
            self.samples = SeededSamples(dataset, seed)
            self.sampler = ResumableSampler(self.samples, world, rank, shuffle=True, seed=seed)
            per_rank = self.sampler.num_samples
        self.batches_per_pass = per_rank // batch_size  # drop_last: equal batches everywhere
        if self.batches_per_pass == 0:
            raise ValueError(
                f"the training set has {len(dataset)} samples, fewer than one batch of {batch_size} per process "
                f"on {world} process(es); lower run.batch_size_train"
            )
        self.micro_per_pass = micro_per_pass or self.batches_per_pass

    def __iter__(self) -> Iterator[Any]:
        return self.iterate(0)

    def _loader(self, pass_idx: int, offset: int) -> Iterator[Any]:
        if self.streaming:
            for part in getattr(self.samples, "datasets", [self.samples]):
                if hasattr(part, "set_epoch"):
                    part.set_epoch(pass_idx)
            loader = DataLoader(self.samples, batch_size=self.batch_size, num_workers=self.num_workers,
                                collate_fn=collate_fn_of(self.samples), drop_last=True)
            return itertools.islice(loader, offset, None)
        self.samples.epoch = pass_idx
        if hasattr(self.samples.dataset, "set_epoch"):  # a ratio mix draws its items per pass
            self.samples.dataset.set_epoch(pass_idx)
        self.sampler.set_epoch(pass_idx)
        self.sampler.set_start(offset * self.batch_size)
        # a fresh generator per pass keeps worker seeds independent of earlier history
        return iter(DataLoader(self.samples, batch_size=self.batch_size, sampler=self.sampler,
                               num_workers=self.num_workers, collate_fn=collate_fn_of(self.samples),
                               drop_last=True, generator=torch.Generator().manual_seed(pass_idx),
                               pin_memory=torch.cuda.is_available()))

    def iterate(self, start: int) -> Iterator[Any]:
        pass_idx, offset = divmod(start, self.micro_per_pass)
        while True:
            for batch in itertools.islice(self._loader(pass_idx, offset), self.micro_per_pass - offset):
                if self.skips.update(batch):
                    yield batch
            pass_idx, offset = pass_idx + 1, 0
