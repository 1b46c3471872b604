"""DeepSpeed behind the strategy interface.

The DeepSpeed config lives inline in the YAML (``run.deepspeed_config``); the run keys
that DeepSpeed also knows are filled in from the run section, so they cannot disagree:
``batch_size_train`` -> ``train_micro_batch_size_per_gpu``, ``accum_grad_iters`` ->
``gradient_accumulation_steps``, ``max_grad_norm`` -> ``gradient_clipping``, ``amp`` ->
``bf16`` / ``fp16``. The optimizer is vlft's (same parameter groups, same scheduler).

Accumulation follows DeepSpeed's documented manual-boundary pattern: the boundary flag
is set before each micro-step, ``backward`` per micro-batch, one ``step`` per window.
A non-finite loss is checked before backward (one host sync per micro-step); its
micro-batch contributes a zero gradient, since a DeepSpeed engine cannot drop an
accumulation window halfway.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from vlft.common import dist
from vlft.runners.checkpoint import atomic_replace_dir
from vlft.runners.strategies import SingleStrategy

logger = logging.getLogger(__name__)


def deepspeed_config(run_cfg) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    user = run_cfg.get("deepspeed_config")
    ds = OmegaConf.to_container(user, resolve=True) if user is not None else {"zero_optimization": {"stage": 2}}
    derived = {
        "train_micro_batch_size_per_gpu": run_cfg.batch_size_train,
        "gradient_accumulation_steps": run_cfg.accum_grad_iters,
    }
    if run_cfg.get("max_grad_norm"):
        derived["gradient_clipping"] = float(run_cfg.max_grad_norm)
    for key, value in derived.items():
        if key in ds and ds[key] != value:
            raise ValueError(f"run.deepspeed_config.{key}={ds[key]} disagrees with the run section ({value}); "
                             f"set it once, in the run section")
        ds[key] = value
    ds["train_batch_size"] = run_cfg.batch_size_train * run_cfg.accum_grad_iters * dist.get_world_size()
    if run_cfg.amp in ("bf16",):
        ds.setdefault("bf16", {"enabled": True})
    elif run_cfg.amp in (True, "fp16"):
        ds.setdefault("fp16", {"enabled": True})
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)  # vlft logs progress itself
    return ds


class DeepSpeedStrategy(SingleStrategy):
    name = "deepspeed"

    def __init__(self, run_cfg, device: torch.device):
        super().__init__(run_cfg, device)
        self.scaler = None  # DeepSpeed scales fp16 losses itself
        self.ds_config = deepspeed_config(run_cfg)
        half = self.ds_config.get("bf16", {}).get("enabled") and torch.bfloat16 or \
            self.ds_config.get("fp16", {}).get("enabled") and torch.float16 or None
        # the engine holds the weights in half precision; autocast casts the (fp32) inputs to match
        self.dtype = half

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        import deepspeed

        if not dist.is_dist():  # DeepSpeed wants a process group even for one process
            dist.init_single_process_group("nccl" if self.device.type == "cuda" else "gloo")
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.model, self.optimizer, self.base_optimizer = engine, ds_optimizer, optimizer
        self.stage = engine.zero_optimization_stage()
        logger.info("DeepSpeed engine ready: ZeRO stage %d, %s", self.stage,
                    "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32")

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def sync_gradients(self, last_micro_step: bool) -> None:
        self.model.set_gradient_accumulation_boundary(last_micro_step)

    def backward(self, loss: torch.Tensor) -> None:
        bad = bool(dist.all_reduce_any(~torch.isfinite(loss.detach())).item())
        if bad:
            self._bad.fill_(True)
            # a zero that still reaches every trainable parameter, so every rank's hooks fire
            loss = sum((p * 0.0).sum() for p in self.module.parameters() if p.requires_grad)
        self.model.backward(loss)

    def step(self) -> bool:
        self.model.step()
        bad = bool(self._bad.item())
        self._bad.zero_()
        return not bad

    def model_state_dict(self) -> Dict[str, torch.Tensor]:
        if self.stage == 3:  # parameters are partitioned: gather a full copy (a collective)
            return self.model._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    def state_dict(self) -> Dict[str, Any]:
        return {}  # the optimizer (and loss scaler) state lives in the DeepSpeed folder

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def save_extra(self, ckpt_path) -> None:
        final = Path(str(ckpt_path) + ".ds")
        tmp = Path(str(ckpt_path) + ".ds.tmp")
        if dist.is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        self.model.save_checkpoint(str(tmp), tag="state")
        dist.barrier()
        if dist.is_main_process():
            atomic_replace_dir(tmp, final)
        dist.barrier()

    def load_extra(self, ckpt_path) -> None:
        folder = Path(str(ckpt_path) + ".ds")
        if not folder.is_dir():
            raise FileNotFoundError(f"DeepSpeed state {folder} is missing beside {ckpt_path}")
        self.model.load_checkpoint(str(folder), tag="state", load_module_strict=False, load_lr_scheduler_states=False)

