"""run.optimizer_impl: which AdamW kernel build_optimizer picks."""
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vlft.runners.optim import adamw_impl, build_optimizer


def run_cfg(**kw):
    base = dict(weight_decay=0.05, init_lr=1e-3, beta2=0.999, runner="runner_base")
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("impl,fused,foreach", [("fused", True, None), ("foreach", None, True), ("single", None, False)])
def test_explicit_choice_reaches_adamw(impl, fused, foreach):
    opt = build_optimizer(nn.Linear(3, 2), run_cfg(optimizer_impl=impl))
    assert opt.defaults["fused"] == fused and opt.defaults["foreach"] == foreach


def test_auto_is_fused_on_cpu_and_default_under_deepspeed():
    assert adamw_impl("auto", [torch.zeros(2)]) == "fused"
    assert build_optimizer(nn.Linear(3, 2), run_cfg()).defaults["fused"] is True
    ds = build_optimizer(nn.Linear(3, 2), run_cfg(deepspeed_config={"train_batch_size": 1}))
    assert not ds.defaults["fused"] and ds.defaults["foreach"] is None


def test_kernels_agree_closely_and_bad_names_are_refused():
    weights = {}
    for impl in ("fused", "foreach", "single"):
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        opt = build_optimizer(model, run_cfg(optimizer_impl=impl))
        for _ in range(3):
            model(torch.ones(2, 4)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
        weights[impl] = model.weight.detach().clone()
    assert torch.allclose(weights["fused"], weights["single"], atol=1e-6)
    assert torch.allclose(weights["foreach"], weights["single"], atol=1e-6)
    with pytest.raises(ValueError, match="optimizer_impl"):
        adamw_impl("fast", [])
