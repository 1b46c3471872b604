"""DeepSpeed behind the strategy interface (docs/deepspeed.md).

The DeepSpeed config lives inline in the YAML (``run.deepspeed_config``); the run keys
that DeepSpeed also knows are filled in from the run section, so they cannot disagree:
``batch_size_train`` -> ``train_micro_batch_size_per_gpu``, ``accum_grad_iters`` ->
``gradient_accumulation_steps``, ``max_grad_norm`` -> ``gradient_clipping`` (0 when
unset: DeepSpeed's own default clips at 1.0), ``amp`` -> ``bf16`` / ``fp16``. The
optimizer is vlft's (same parameter groups, same scheduler).

Accumulation follows DeepSpeed's documented manual-boundary pattern: the boundary flag
is set before each micro-step, ``backward`` per micro-batch, one ``step`` per window.
A non-finite loss is checked before backward (one host sync per micro-step); its
micro-batch contributes a zero gradient, since a DeepSpeed engine cannot drop an
accumulation window halfway, and the window's engine step runs at learning rate 0:
the weights stay as they were (Adam's moments decay one step) and ``step`` reports
the update as skipped.

Checkpoints: DeepSpeed's engine state goes to ``<checkpoint>.ds/<tag>/``, one tag per
save, named in the checkpoint file; the previous tag is deleted at the next save, so a
crash never leaves a file without its DeepSpeed state. Resuming reads DeepSpeed's files
with ``weights_only=True`` too (``weights_only_loads``), as vlft's own checkpoints.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from vlft.common import dist
from vlft.runners.strategies import SingleStrategy

logger = logging.getLogger(__name__)


def deepspeed_config(run_cfg) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    user = run_cfg.get("deepspeed_config")
    ds = OmegaConf.to_container(user, resolve=True) if user is not None else {"zero_optimization": {"stage": 2}}
    if "bfloat16" in ds:  # DeepSpeed's old spelling of the bf16 section
        ds["bf16"] = ds.pop("bfloat16")
    derived = {
        "train_micro_batch_size_per_gpu": run_cfg.batch_size_train,
        "gradient_accumulation_steps": run_cfg.accum_grad_iters,
    }
    if run_cfg.get("max_grad_norm"):
        derived["gradient_clipping"] = float(run_cfg.max_grad_norm)
    elif "gradient_clipping" not in ds:
        # DeepSpeed clips at 1.0 unless told otherwise; vlft (and SingleStrategy) clip only on request
        ds["gradient_clipping"] = 0.0
    for key, value in derived.items():
        if key in ds and ds[key] != value:
            raise ValueError(f"run.deepspeed_config.{key}={ds[key]} disagrees with the run section ({value}); "
                             f"set it once, in the run section")
        ds[key] = value
    world = dist.get_world_size()
    train_batch = run_cfg.batch_size_train * run_cfg.accum_grad_iters * world
    if "train_batch_size" in ds and ds["train_batch_size"] != train_batch:
        raise ValueError(f"run.deepspeed_config.train_batch_size={ds['train_batch_size']} disagrees with "
                         f"batch_size_train x accum_grad_iters x world size = {train_batch}; leave it out")
    ds["train_batch_size"] = train_batch
    half = {"bf16": "bf16", "fp16": "fp16", True: "fp16"}.get(run_cfg.amp)
    for key in ("bf16", "fp16"):
        section = ds.get(key)
        if half == key:
            if isinstance(section, dict) and section.get("enabled") is False:
                raise ValueError(f"run.amp={run_cfg.amp} but run.deepspeed_config.{key}.enabled is false")
            ds[key] = {**(section or {}), "enabled": True}
        elif half is not None and isinstance(section, dict) and section.get("enabled"):
            raise ValueError(f"run.amp={run_cfg.amp} but run.deepspeed_config enables {key}")
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
        self._tag: Optional[str] = None  # the DeepSpeed checkpoint tag the latest checkpoint file names

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        dist.quiet_deepspeed_accelerator()
        import deepspeed

        from vlft.common.debug_log import route_third_party

        route_third_party()  # DeepSpeed's logger, set up on import, prints to stdout itself
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
        bad = bool(self._bad.item())
        self._bad.zero_()
        groups = self.base_optimizer.param_groups
        saved = [g["lr"] for g in groups]
        if bad:  # the engine must still step; at lr 0 AdamW / SGD leave the weights as they are
            for g in groups:
                g["lr"] = 0.0
        try:
            self.model.step()
        finally:
            for g, lr in zip(groups, saved):
                g["lr"] = lr
        return not bad

    def model_state_dict(self) -> Dict[str, torch.Tensor]:
        if self.stage == 3:  # parameters are partitioned: gather a full copy (a collective)
            return self.model._zero3_consolidated_16bit_state_dict() or {}
        return self.module.state_dict()

    # --- checkpoints: DeepSpeed's own folder <ckpt>.ds/ beside the vlft file, one tag per save.
    # The vlft file names the tag it goes with, and the tag it replaces is deleted only at the
    # next save, so a crash at any point leaves a file and a DeepSpeed state that agree.
    def state_dict(self) -> Dict[str, Any]:
        # the optimizer (and loss scaler) state lives in the DeepSpeed folder
        return {"deepspeed_tag": self._tag}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._tag = state.get("deepspeed_tag") or "state"

    def save_extra(self, ckpt_path) -> None:
        folder = Path(str(ckpt_path) + ".ds")
        tag = f"step{self.model.global_steps}"
        if tag == self._tag:  # saved twice at one step: never overwrite the live one
            tag += "b"
        keep = {tag, self._tag}  # the new state and the one the file on disk names
        if dist.is_main_process():
            shutil.rmtree(folder / tag, ignore_errors=True)  # a torn write of this very step
        dist.barrier()
        # frozen weights are not training state (they come from the pretrained model), and
        # the trainable ones are restored from the optimizer's fp32 copy
        self.model.save_checkpoint(str(folder), tag=tag, exclude_frozen_parameters=True)
        dist.barrier()
        if dist.is_main_process():
            for old in folder.iterdir():
                if old.is_dir() and old.name not in keep:
                    shutil.rmtree(old, ignore_errors=True)
        self._tag = tag

    def load_extra(self, ckpt_path) -> None:
        folder = Path(str(ckpt_path) + ".ds")
        tag = self._tag or "state"
        if not (folder / tag).is_dir():
            raise FileNotFoundError(f"DeepSpeed state {folder / tag} is missing beside {ckpt_path} "
                                    f"(a DeepSpeed run resumes only from a DeepSpeed checkpoint)")
        with weights_only_loads(self.model):
            load_path, _ = self.model.load_checkpoint(str(folder), tag=tag, load_module_strict=False,
                                                      load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load {folder / tag}")


def _deepspeed_safe_globals() -> list:
    """The classes DeepSpeed pickles into its checkpoints besides tensors and plain values
    (ZeRO 1-3 optimizer states, fp32 / bf16 / fp16, DeepSpeed 0.19)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


@contextlib.contextmanager
def weights_only_loads(engine):
    """Make ``engine.load_checkpoint`` read its files with ``torch.load(weights_only=True)``
    (DeepSpeed's own checkpoint engine unpickles with ``weights_only=False``, which runs
    whatever code a tampered file holds), allowing only the few DeepSpeed classes its
    checkpoints contain. A checkpoint engine other than DeepSpeed's default
    (``TorchCheckpointEngine``) is left as it is, with a warning."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    ce = getattr(engine, "checkpoint_engine", None)
    if not isinstance(ce, TorchCheckpointEngine):
        logger.warning("DeepSpeed checkpoint engine %s: its files load with DeepSpeed's own (unrestricted) "
                       "unpickling; resume only from checkpoints you trust", type(ce).__name__)
        yield
        return
    allowed = _deepspeed_safe_globals()

    def load(path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            raise RuntimeError(f"cannot load DeepSpeed state {path} as weights only ({type(err).__name__}: "
                               f"{str(err).splitlines()[0]}); a checkpoint of another DeepSpeed version may hold "
                               "classes vlft does not allow (vlft/runners/deepspeed_strategy.py)") from err

    ce.load = load  # an instance attribute, shadowing the class's method for this call only
    try:
        yield
    finally:
        del ce.load
