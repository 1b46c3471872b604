"""How a micro-step's loss becomes an optimizer step, per backend.

The runner talks to one small interface (the verbs accelerate made familiar):
``prepare``, ``autocast``, ``sync_gradients``, ``backward``, ``step``, and the state to
checkpoint. ``SingleStrategy`` covers one process, ``DDPStrategy`` adds gradient
all-reduce, ``DeepSpeedStrategy`` hands the step to a DeepSpeed engine.

Non-finite losses: on a GPU the flag is accumulated on the device without a host sync
and read once per optimizer step; on the CPU, where reading a loss costs nothing, it is
a plain bool (three tensor ops fewer per micro-step). All ranks agree on a skipped
step, so DDP never hangs on one.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from vlft.common import dist

logger = logging.getLogger(__name__)


def amp_dtype(amp: Any) -> Optional[torch.dtype]:
    if amp in (True, "fp16"):
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    return None


class SingleStrategy:
    name = "single"

    def __init__(self, run_cfg, device: torch.device):
        self.device = device
        self.accum = run_cfg.accum_grad_iters
        self.max_grad_norm = run_cfg.get("max_grad_norm")
        self.dtype = amp_dtype(run_cfg.amp)
        # a GradScaler only for fp16: bf16 has fp32's range and needs no loss scaling
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.model: Optional[nn.Module] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self._host_flag = device.type == "cpu"
        self._bad_host = False
        self.last_grad_norm: Optional[torch.Tensor] = None

    # --- set-up
    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    @property
    def module(self) -> nn.Module:
        """The bare model (no DDP / DeepSpeed wrapper)."""
        return self.model

    def refresh(self) -> None:
        """The set of trainable parameters changed (progressive unfreezing)."""

    # --- one micro-step
    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def sync_gradients(self, last_micro_step: bool) -> None:
        """Called before each micro-step's forward; DDP skips the all-reduce until the last."""

    def backward(self, loss: torch.Tensor) -> None:
        if self._host_flag:
            self._bad_host = self._bad_host or not math.isfinite(loss.item())
        else:
            self._bad |= ~torch.isfinite(loss.detach())
        if self.accum > 1:
            loss = loss / self.accum
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> bool:
        """Apply the accumulated gradients; False (and no update) when a loss was non-finite."""
        if self._host_flag:
            bad, self._bad_host = self._bad_host, False
            if dist.is_dist():
                bad = bool(dist.all_reduce_any(torch.tensor(bad)).item())
        else:
            bad = bool(dist.all_reduce_any(self._bad).item())
            self._bad.zero_()
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.max_grad_norm:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    # --- checkpoint state
    def model_state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save_extra(self, ckpt_path) -> None:
        """Backend state that does not fit the checkpoint file (DeepSpeed shards)."""

    def load_extra(self, ckpt_path) -> None:
        pass


class DDPStrategy(SingleStrategy):
    name = "ddp"

    def __init__(self, run_cfg, device: torch.device):
        super().__init__(run_cfg, device)
        self.find_unused = run_cfg.find_unused_parameters

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=self.find_unused)
        super().prepare(ddp, optimizer)

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def refresh(self) -> None:
        # DDP registers its gradient hooks for the parameters trainable at wrap time
        self.prepare(self.model.module, self.optimizer)

    def sync_gradients(self, last_micro_step: bool) -> None:
        # as nanoGPT does: the flag DDP's forward reads, instead of a no_sync() context
        # wrapped around forward and backward of every micro-step but the last
        self.model.require_backward_grad_sync = last_micro_step


def build_strategy(run_cfg, device: torch.device):
    if run_cfg.get("deepspeed_config") is not None or run_cfg.runner in ("runner_deepspeed", "deepspeed_runner"):
        from vlft.runners.deepspeed_strategy import DeepSpeedStrategy

        return DeepSpeedStrategy(run_cfg, device)
    if dist.get_world_size() > 1:
        return DDPStrategy(run_cfg, device)
    return SingleStrategy(run_cfg, device)
