"""SeededSamples: per-sample seeds for torch always, for random / numpy only when declared."""
import random

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from vlft.runners.data import SeededSamples, uses_global_rng
from vlft.runners.mixing import RatioMix


class Draws(Dataset):
    """Each item is what the three global RNGs give at that moment."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.rand(()).item(), random.random(), float(np.random.rand())


class GlobalDraws(Draws):
    uses_global_rng = True


class FlipProcessor:
    uses_global_rng = True


class WithProcessor(Draws):
    def __init__(self):
        self.vis_processor = FlipProcessor()


def test_declarations_are_found_through_wrappers_and_processors():
    assert not uses_global_rng(Draws())
    assert uses_global_rng(GlobalDraws())
    assert uses_global_rng(WithProcessor())
    assert uses_global_rng(ConcatDataset([Draws(), GlobalDraws()]))
    assert uses_global_rng(RatioMix({"a": Draws(), "b": WithProcessor()}, {"a": 1, "b": 1}, seed=0))
    assert not uses_global_rng(ConcatDataset([Draws(), Draws()]))


def test_torch_draws_depend_on_seed_pass_and_index_only():
    samples = SeededSamples(Draws(), seed=3)
    batch = samples.__getitems__([5, 1, 2])
    alone = [samples[i] for i in (5, 1, 2)]
    assert [b[0] for b in batch] == [a[0] for a in alone]
    samples.epoch = 1
    assert samples[5][0] != batch[0][0]


def test_undeclared_dataset_leaves_python_and_numpy_alone():
    samples = SeededSamples(Draws(), seed=3)
    random.seed(7)
    np.random.seed(7)
    first = samples.__getitems__([0, 1])
    random.seed(7)
    np.random.seed(7)
    expected_py, expected_np = random.random(), float(np.random.rand())
    assert first[0][1] == expected_py and first[0][2] == expected_np  # the untouched global streams


def test_declared_dataset_draws_per_sample_and_restores_every_state():
    samples = SeededSamples(GlobalDraws(), seed=3)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    batch = samples.__getitems__([4, 6])
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    random.seed(123)  # another history: the items do not change
    np.random.seed(123)
    assert samples.__getitems__([4, 6]) == batch
    assert batch[0] != batch[1]


def test_workers_give_the_same_items_as_the_main_process():
    samples = SeededSamples(GlobalDraws(), seed=1)
    main = [samples[i] for i in range(8)]
    loader = DataLoader(samples, batch_size=4, num_workers=2, collate_fn=list)
    from_workers = [item for batch in loader for item in batch]
    assert from_workers == main
