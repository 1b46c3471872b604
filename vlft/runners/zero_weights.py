"""Model weights of a DeepSpeed run: ZeRO-3's partitioned parameters and the fp32 model.

- :func:`gathered`: under ZeRO-3 each rank holds a slice of every large parameter (empty
  tensors outside a forward); loading weights into the module or exporting it needs the
  full tensors, which ``deepspeed.zero.GatheredParameters`` provides for the duration of
  the block (what rank 0 writes is broadcast when it ends). Elsewhere it does nothing.
- :func:`consolidate_fp32`: the fp32 weights of the trained parameters, merged from a
  checkpoint's ZeRO shards by DeepSpeed's own ``zero_to_fp32`` helpers (its master
  weights, not the bf16 / fp16 copies the engine trains with). Frozen parameters are not
  training state and are left out (the ZeRO state only ever holds the trainable ones).
  Without ZeRO shards (stage 0 in fp32) the engine's own weights are the fp32 ones.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Dict, Iterator

import torch
from torch import nn

from vlft.runners import checkpoint as ckpt_io

logger = logging.getLogger(__name__)
FP32 = "model_fp32.pth"


def is_partitioned(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in module.parameters())


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """Full parameters inside the block under ZeRO-3 (a collective: every rank enters it)."""
    if not is_partitioned(module):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
        yield


def consolidate_fp32(ckpt_path: Path, out_path: Path) -> Path:
    """Write ``out_path`` (a vlft checkpoint: ``{"model": fp32 trainable weights}``) from the
    DeepSpeed state beside ``ckpt_path``; returns it."""
    ckpt = ckpt_io.read(ckpt_path)
    tag = (ckpt.get("strategy") or {}).get("deepspeed_tag")
    folder = Path(str(ckpt_path) + ".ds")
    if not tag or not (folder / tag).is_dir():
        raise FileNotFoundError(f"no DeepSpeed state beside {ckpt_path} (looked for {folder / str(tag)})")
    if any((folder / tag).glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state: Dict[str, torch.Tensor] = get_fp32_state_dict_from_zero_checkpoint(
            str(folder), tag=tag, exclude_frozen_parameters=True)
        state = {k: v.detach().float().contiguous() for k, v in state.items()}
        how = "merged from the ZeRO shards by DeepSpeed's zero_to_fp32"
    else:  # stage 0 without a ZeRO optimizer: the engine's weights are the master weights
        state = {k: v.float() for k, v in ckpt["model"].items()}
        how = "the engine's own (no ZeRO shards)"
    ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "model": state, "progress": ckpt.get("progress"),
                         "config": ckpt.get("config")}, out_path)
    logger.info("fp32 weights of the trained parameters (%d tensors, %s) saved to %s", len(state), how, out_path)
    return out_path
