"""The one place that knows about distributed state.

Launchers: ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*), the ``deepspeed``
launcher (same variables) and SLURM's ``srun`` (SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID; the master is the first host of SLURM_JOB_NODELIST).
"""
from __future__ import annotations

import datetime
import logging
import os
import subprocess
from typing import Any, List

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _slurm_env() -> None:
    """Translate SLURM's variables into torchrun's, when launched by ``srun``."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "127.0.0.1")
        try:
            first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            first = nodes.split(",")[0]  # a plain host list; bracketed ranges need scontrol
        os.environ["MASTER_ADDR"] = first
    os.environ.setdefault("MASTER_PORT", "29500")


def quiet_deepspeed_accelerator() -> None:
    """Before DeepSpeed is first imported: name its accelerator when there is no GPU, which
    is what it would detect, so that it does not print its "Setting accelerator to CPU"
    warning at import (the cpu accelerator then needs no extra packages)."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def pick_device(requested: str = "auto") -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from vlft.common.errors import UserError

        raise UserError("run.device is 'cuda' but torch sees no CUDA device (torch.cuda.is_available() is False: "
                        f"torch {torch.__version__} built {'with CUDA ' + torch.version.cuda if torch.version.cuda else 'for CPU only'}); "
                        "set run.device: cpu or auto, or check the driver and CUDA_VISIBLE_DEVICES")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(run_cfg: Any) -> torch.device:
    """Join the process group when launched with several processes; return this rank's device."""
    _slurm_env()
    device = pick_device(run_cfg.get("device", "auto"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 or not run_cfg.get("distributed", True) or is_dist():
        return device
    backend = run_cfg.get("dist_backend", "auto")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(minutes=30))
    logger.info("rank %d/%d joined (%s on %s)", get_rank(), world, backend, device)
    return device


def init_single_process_group(backend: str) -> None:
    """A one-process group (for DeepSpeed started without a launcher)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port))):
        os.environ.setdefault(key, value)
    dist.init_process_group(backend=backend, init_method="env://")


def all_gather_object(obj: Any) -> List[Any]:
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_any(flag: torch.Tensor) -> torch.Tensor:
    """True on every rank when ``flag`` is true on any (for agreeing on a skipped step)."""
    if is_dist():
        flag = flag.float()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.bool()


def _sizes(n: int, device) -> List[int]:
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(x) for x in sizes]


def batch_offset(n: int, device=None) -> int:
    """Where this rank's ``n`` rows start in a :func:`gather_tensors` result."""
    if not is_dist() or get_world_size() == 1:
        return 0
    return sum(_sizes(n, device or "cpu")[: get_rank()])


def gather_tensors(tensor: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated on dim 0 (the first dimension may differ
    between ranks, e.g. the last evaluation batch). With ``with_grad`` the gradient
    flows back to each rank's own slice (contrastive losses over the global batch);
    without it the result is detached."""
    if not is_dist() or get_world_size() == 1:
        return tensor if with_grad else tensor.detach()
    sizes = _sizes(tensor.shape[0], tensor.device)
    padded = torch.nn.functional.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, max(sizes) - tensor.shape[0]))
    if with_grad:
        import torch.distributed.nn.functional as dist_nn

        parts = dist_nn.all_gather(padded.contiguous())
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.detach().contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place; returns ``tensor``)."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def destroy() -> None:
    if is_dist():
        dist.destroy_process_group()
