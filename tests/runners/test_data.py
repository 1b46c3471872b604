import torch
from torch.utils.data import Dataset

from vlft.runners.data import MicroBatchStream, ResumableSampler, ShardSampler


class Noisy(Dataset):
    """Each sample draws from the global RNG, as random augmentations do."""

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return {"i": i, "noise": torch.rand(2)}


def test_sampler_resumes_mid_pass():
    full = list(ResumableSampler(Noisy(), num_replicas=2, rank=1, shuffle=True, seed=3))
    s = ResumableSampler(Noisy(), num_replicas=2, rank=1, shuffle=True, seed=3)
    s.set_start(7)
    assert list(s) == full[7:] and len(s) == len(full) - 7


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_stream_from_any_position_equals_the_tail_of_the_full_stream():
    stream = MicroBatchStream(Noisy(), batch_size=4, num_workers=0, rank=0, world=1, seed=5)
    full = [b for _, b in zip(range(25), stream.iterate(0))]  # 2.5 passes of 10 batches
    tail = [b for _, b in zip(range(12), stream.iterate(13))]
    for a, b in zip(full[13:], tail):
        assert torch.equal(a["i"], b["i"]) and torch.equal(a["noise"], b["noise"])
    assert not torch.equal(full[0]["i"], full[10]["i"])  # each pass reshuffles


def test_augmentation_does_not_depend_on_worker_count():
    one = next(MicroBatchStream(Noisy(), 4, num_workers=0, rank=0, world=1, seed=5).iterate(0))
    two = next(MicroBatchStream(Noisy(), 4, num_workers=2, rank=0, world=1, seed=5).iterate(0))
    assert torch.equal(one["i"], two["i"]) and torch.equal(one["noise"], two["noise"])
    before = torch.get_rng_state()
    next(MicroBatchStream(Noisy(), 4, num_workers=0, rank=0, world=1, seed=5).iterate(0))
    assert torch.equal(before, torch.get_rng_state())  # the training RNG stream is untouched


class HalfBroken(Noisy):
    """Every ``every``-th sample is unreadable (the dataset returns None, as image loaders do)."""

    def __init__(self, every):
        self.every = every

    def __getitem__(self, i):
        return None if i % self.every == 0 else super().__getitem__(i)


def test_unreadable_samples_are_dropped_and_counted():
    stream = MicroBatchStream(HalfBroken(every=20), batch_size=4, num_workers=2, rank=0, world=1, seed=0, max_bad_fraction=0.2)
    batches = [b for _, b in zip(range(10), stream.iterate(0))]
    assert sum(len(b["i"]) for b in batches) == 38 and stream.skips.skipped == 2
    assert all("n_skipped" not in b for b in batches)


def test_too_many_unreadable_samples_stop_the_run():
    import pytest

    from vlft.runners.data import BadDataError

    stream = MicroBatchStream(HalfBroken(every=2), batch_size=4, num_workers=0, rank=0, world=1, seed=0, max_bad_fraction=0.1)
    with pytest.raises(BadDataError, match="could not be read"):
        for _ in stream.iterate(0):
            pass
