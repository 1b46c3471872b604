"""Training on several datasets mixed by ratio (``run.train_dataset_ratios: {name: ratio}``).

LAVIS reads the same key, only in its iteration runner (``MultiIterLoader``: each batch
comes from one dataset drawn with ``random.choices``, so the mix is neither seeded per
run nor resumable); MiniGPT4Qwen concatenates its datasets. Here the mix is one map-style
dataset over the named ones, used by both runners through the same resumable sampler:

- A pass holds ``L`` items (the sum of the datasets' lengths, as their concatenation
  would), of which dataset ``k`` gets ``n_k = L * r_k / sum(r)`` (rounded by largest
  remainder, so the counts add up to ``L``). Batches mix datasets.
- Dataset ``k``'s items in pass ``p`` are its slots ``p * n_k ... p * n_k + n_k - 1`` of an
  endless walk through seeded permutations of it (permutation ``c`` covers slots
  ``c * len_k ... (c + 1) * len_k - 1``): a down-weighted dataset shows new items in each
  pass until all were seen, an up-weighted one repeats its items evenly.
- Everything is a function of (seed, pass, index), so a resumed run sees the same items
  in the same order; the runner's sampler shuffles the pass as usual.
"""
from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate


def largest_remainder(total: int, weights: Sequence[float]) -> List[int]:
    """``total`` split in proportion to ``weights`` (integers that sum to ``total``)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class RatioMix(Dataset):
    """``datasets`` ({name: dataset}) mixed by ``ratios`` ({name: weight}); see the module docstring."""

    def __init__(self, datasets: Mapping[str, Dataset], ratios: Mapping[str, float], seed: int = 0,
                 pass_length: int = 0):
        names = list(datasets)
        unknown = [n for n in ratios if n not in datasets]
        missing = [n for n in names if n not in ratios]
        if unknown or missing:
            raise ValueError(f"run.train_dataset_ratios must name each training dataset once: "
                             f"{'unknown ' + str(unknown) if unknown else ''}{' ' if unknown and missing else ''}"
                             f"{'missing ' + str(missing) if missing else ''}; the training datasets are {names}")
        if any(isinstance(d, IterableDataset) for d in datasets.values()):
            raise ValueError("run.train_dataset_ratios mixes indexed datasets; a streaming (webdataset) one has no "
                             "index to draw from")
        weights = [float(ratios[n]) for n in names]
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"run.train_dataset_ratios must be non-negative with a positive sum, got {dict(ratios)}")
        self.names, self.datasets, self.seed, self.epoch = names, [datasets[n] for n in names], int(seed), 0
        self.sizes = [len(d) for d in self.datasets]
        empty = [n for n, s, w in zip(names, self.sizes, weights) if s == 0 and w > 0]
        if empty:
            raise ValueError(f"run.train_dataset_ratios gives weight to empty dataset(s) {empty}")
        self.length = int(pass_length) or sum(self.sizes)
        self.counts = largest_remainder(self.length, weights)
        self.bounds = np.cumsum([0] + self.counts).tolist()
        self._perms: Dict[Tuple[int, int], np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """The pass the next items belong to (the runner calls it at the start of each pass)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _perm(self, k: int, cycle: int) -> np.ndarray:
        key = (k, cycle)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            digest = hashlib.sha256(f"{self.seed}/{self.names[k]}/{cycle}".encode()).digest()
            self._perms[key] = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(self.sizes[k])
        return self._perms[key]

    def locate(self, index: int) -> Tuple[int, int]:
        """``(dataset number, item index)`` of mixed item ``index`` in the current pass."""
        k = bisect_right(self.bounds, int(index)) - 1
        slot = self.epoch * self.counts[k] + int(index) - self.bounds[k]
        cycle, pos = divmod(slot, self.sizes[k])
        return k, int(self._perm(k, cycle)[pos])

    def __getitem__(self, index: int) -> Any:
        k, i = self.locate(index)
        return self.datasets[k][i]

    def collater(self, samples: List[Any]) -> Any:
        """The first dataset's collater (the datasets of one mix share their item format)."""
        collate = getattr(self.datasets[0], "collater", None) or default_collate
        return collate(samples)

