"""Data loading that can stop anywhere and resume exactly.

- ``ResumableSampler``: torch's ``DistributedSampler`` order (seeded by seed + pass,
  padded to the world size, one shard per rank) that can start mid-pass.
- ``SeededSamples``: each sample's random augmentation is drawn from an RNG seeded by
  (seed, pass, index), so it does not depend on the number of workers, on which
  worker loaded it, or on where a run was interrupted.
- ``SkippingCollate`` / ``SkipCounter``: a sample whose image cannot be read comes back
  as ``None``, is dropped from its batch and counted; too many stop the run.
- ``MicroBatchStream``: the training stream as global micro-batch numbers. A pass over
  the data holds ``micro_per_pass`` micro-batches; micro-batch ``m`` is batch
  ``m % micro_per_pass`` of pass ``m // micro_per_pass``.
"""
from __future__ import annotations

import itertools
import random
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


class SeededSamples(Dataset):
    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: List[int]) -> List[Any]:
        """One batch (the DataLoader calls this once per batch): the RNG states are saved
        and restored once, and each sample is drawn from its own seed."""
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        try:
            out = []
            for index in indices:
                seed = hash((self.seed, self.epoch, int(index))) % 2**31
                random.seed(seed)
                np.random.seed(seed)
                # the CPU generator only: torch.manual_seed would also (slowly) reseed CUDA's
                torch.default_generator.manual_seed(seed)
                out.append(self.dataset[index])
            return out
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.default_generator.set_state(torch_state)

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


class SkipCounter:
    """Counts skipped samples; past ``limit`` (a fraction, judged after ``min_seen``
    samples) the run stops rather than train on a quietly shrinking dataset."""

    def __init__(self, limit: float, min_seen: int = 50):
        self.limit, self.min_seen = limit, min_seen
        self.seen = self.skipped = 0

    def update(self, batch: Any) -> bool:
        """Count one batch; False when none of its samples could be read."""
        n = int(batch.pop("n_skipped", 0)) if isinstance(batch, dict) else 0
        good = batch_len(batch)
        self.seen += good + n
        self.skipped += n
        if self.seen >= self.min_seen and self.skipped > self.limit * self.seen:
            raise BadDataError(
                f"{self.skipped} of {self.seen} samples so far could not be read (over the limit "
                f"run.max_bad_sample_fraction={self.limit}); see the warnings above for the files, "
                "fix or remove them, or raise the limit"
            )
        return good > 0


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
    (``run.use_dist_eval_sampler: false``, as LAVIS) the whole split on every rank."""
    # a streaming dataset splits itself by rank and worker; an indexed one is sharded here
    sampler = None
    if not isinstance(dataset, IterableDataset):
        sampler = ShardSampler(len(dataset), world, rank) if shard else ShardSampler(len(dataset), 1, 0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn_of(dataset), drop_last=False)


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
