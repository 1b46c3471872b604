import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vlft.runners.strategies import SingleStrategy


def run_cfg(**kw):
    base = dict(accum_grad_iters=1, max_grad_norm=None, amp=False)
    base.update(kw)
    return OmegaConf.create(base)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def grads_after(strategy, model, batches):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    strategy.prepare(model, opt)
    for i, (x, y) in enumerate(batches):
        strategy.sync_gradients(i == len(batches) - 1)
        with strategy.autocast():
            loss = nn.functional.mse_loss(model(x).squeeze(-1), y)
        strategy.backward(loss)
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_two_by_four_equals_one_by_eight():
    torch.manual_seed(1)
    x, y = torch.randn(8, 6), torch.randn(8)
    accumulated = grads_after(SingleStrategy(run_cfg(accum_grad_iters=2), torch.device("cpu")), make_model(),
                              [(x[:4], y[:4]), (x[4:], y[4:])])
    whole = grads_after(SingleStrategy(run_cfg(), torch.device("cpu")), make_model(), [(x, y)])
    for a, b in zip(accumulated, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_bf16_autocast_on_cpu_and_no_scaler():
    strategy = SingleStrategy(run_cfg(amp="bf16"), torch.device("cpu"))
    assert strategy.scaler is None
    model = make_model()
    with strategy.autocast():
        out = model(torch.randn(2, 6))
    assert out.dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32


def test_fp16_gets_a_grad_scaler_and_true_means_fp16():
    assert SingleStrategy(run_cfg(amp="fp16"), torch.device("cpu")).scaler is not None
    assert SingleStrategy(run_cfg(amp=True), torch.device("cpu")).dtype == torch.float16


def test_non_finite_loss_skips_the_whole_window():
    strategy = SingleStrategy(run_cfg(accum_grad_iters=2), torch.device("cpu"))
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    strategy.prepare(model, opt)
    x = torch.randn(4, 6)
    strategy.backward(model(x).sum() * float("nan"))
    strategy.backward(model(x).sum())
    assert strategy.step() is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    strategy.backward(model(x).sum())  # the flag was reset: the next window steps
    strategy.backward(model(x).sum())
    assert strategy.step() is True
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_gradient_clipping_bounds_the_update_norm():
    strategy = SingleStrategy(run_cfg(max_grad_norm=0.01), torch.device("cpu"))
    model = make_model()
    strategy.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
    strategy.backward((model(torch.randn(4, 6)) * 1000).sum())
    assert strategy.step()
    assert strategy.last_grad_norm > 0.01  # the norm before clipping is reported
