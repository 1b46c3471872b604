import math

import pytest
import torch

from vlft.common.registry import registry


def make(name, **kw):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [param], "lr_scale": 1.0}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.1}], lr=1.0)
    args = dict(total_steps=100, steps_per_epoch=10, init_lr=1.0, min_lr=0.1, warmup_lr=0.0, warmup_steps=10, decay_rate=0.5)
    args.update(kw)
    return registry.get_lr_scheduler_class(name)(opt, **args), opt


def test_cosine_warmup_then_half_cosine_to_min():
    sched, opt = make("linear_warmup_cosine_lr")
    assert sched.step(0) == 0.0
    assert sched.step(5) == pytest.approx(0.5)
    assert sched.step(10) == pytest.approx(1.0)
    mid = 10 + 45
    assert sched.step(mid) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert sched.step(100) == pytest.approx(0.1)
    # every group gets its lr_scale
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and opt.param_groups[1]["lr"] == pytest.approx(0.01)


def test_warmup_may_span_epochs():
    sched, _ = make("linear_warmup_cosine_lr", warmup_steps=25, steps_per_epoch=10)
    lrs = [sched.step(s) for s in range(26)]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # still rising in epoch 2
    assert lrs[25] == pytest.approx(1.0)


def test_step_lr_decays_per_epoch_with_floor():
    sched, _ = make("linear_warmup_step_lr", warmup_steps=0)
    assert sched.step(0) == pytest.approx(1.0)
    assert sched.step(10) == pytest.approx(0.5)
    assert sched.step(25) == pytest.approx(0.25)
    assert sched.step(99) == pytest.approx(0.1)  # floored at min_lr


def test_constant_after_warmup_and_state_round_trip():
    sched, _ = make("constant_lr", warmup_steps=4)
    assert [sched.step(s) for s in (0, 2, 4, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    other, _ = make("constant_lr", warmup_steps=4)
    other.load_state_dict(sched.state_dict())
    assert other.last_step == 50
