"""Unreadable samples: a bad fraction at the limit is sampling noise, not a reason to
stop; one well over it stops the run with a message that says how bad and why."""
import random

import pytest
import torch
from torch.utils.data import Dataset

from vlft.runners.data import BadDataError, MicroBatchStream, SkipCounter, wilson_lower_bound


class SomeBroken(Dataset):
    """``fraction`` of the items (a fixed random set) are unreadable: the dataset
    returns None for them, as the image loaders do."""

    def __init__(self, n: int, fraction: float, seed: int = 0):
        rng = random.Random(seed)
        self.n, self.bad = n, set(rng.sample(range(n), round(n * fraction)))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return None if i in self.bad else {"i": i, "x": torch.ones(2)}


def drain(stream: MicroBatchStream, batches: int) -> int:
    return sum(len(b["i"]) for _, b in zip(range(batches), stream.iterate(0)))


def test_five_percent_bad_data_at_the_default_limit_trains_on():
    # the case: 5% unreadable at the default 0.05 used to stop after 64 samples (4 bad)
    for seed in range(3):
        stream = MicroBatchStream(SomeBroken(640, 0.05, seed), batch_size=16, num_workers=0, rank=0, world=1,
                                  seed=seed)
        good = drain(stream, 40 * 3)  # three passes
        assert stream.skips.seen == 3 * 640 and stream.skips.skipped == 3 * 32 and good == 3 * 608


def test_thirty_percent_bad_data_stops_with_a_message():
    stream = MicroBatchStream(SomeBroken(640, 0.30), batch_size=16, num_workers=0, rank=0, world=1, seed=0)
    with pytest.raises(BadDataError) as err:
        drain(stream, 40)
    message = str(err.value)
    assert "could not be read" in message and "run.max_bad_sample_fraction=0.05" in message
    assert "99% confidence" in message
    assert 200 <= stream.skips.seen <= 240  # judged as soon as min_seen samples were seen


def test_early_bad_luck_is_not_judged_before_min_seen():
    counter = SkipCounter(0.05)
    counter.update({"i": torch.arange(12), "n_skipped": 4})  # 25% of the first 16
    assert counter.skipped == 4 and counter.seen == 16  # not stopped


def test_limit_zero_stops_at_the_first_unreadable_sample():
    counter = SkipCounter(0.0)
    counter.update({"i": torch.arange(16)})
    with pytest.raises(BadDataError):
        counter.update({"i": torch.arange(15), "n_skipped": 1})


def test_wilson_lower_bound():
    assert wilson_lower_bound(0, 100) == pytest.approx(0.0, abs=1e-12)
    assert wilson_lower_bound(4, 64) < 0.05 < 4 / 64  # the 64 samples prove nothing
    assert wilson_lower_bound(60, 200) > 0.2
    assert wilson_lower_bound(500, 10000) < 0.05  # exactly at the limit: never above it
