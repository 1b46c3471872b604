"""Two small pieces ``benchmarks/gpu_check.py`` puts into the runs it launches.

1. As a vlft plugin (``VLFT_PLUGINS=benchmarks/_gpu_check_hooks.py``): records, at the
   entry of every task's ``evaluation``, whether autocast is on and in which dtype, and
   appends one JSON line per call to ``$VLFT_GPU_CHECK_PROBE``. The runner enters its
   autocast context around ``task.evaluation``, so this is the precision the models were
   evaluated in. With ``$VLFT_GPU_CHECK_FORCE_AUTOCAST=bf16`` and autocast off, it
   enters bf16 autocast itself (and records ``forced``), so the models' evaluation paths
   are still exercised under bf16 while the check reports that vlft did not apply
   ``run.amp``.

2. As a launcher script (``torchrun ... benchmarks/_gpu_check_hooks.py --cfg-path ...``):
   joins a process group of ``$VLFT_GPU_CHECK_BACKEND`` (nccl / gloo) before handing
   over to ``vlft.launch.main_train``. vlft joins a group only with two or more ranks,
   so a one-rank torchrun would otherwise never touch NCCL; with the group already up,
   vlft's collectives (job id broadcast, the non-finite all-reduce every step, the RNG
   all-gather at checkpoints, barriers) run over it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys

import torch

PROBE_ENV, FORCE_ENV, BACKEND_ENV = "VLFT_GPU_CHECK_PROBE", "VLFT_GPU_CHECK_FORCE_AUTOCAST", "VLFT_GPU_CHECK_BACKEND"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _model_device(model) -> str:
    try:
        return next(model.parameters()).device.type
    except (StopIteration, AttributeError):
        return "cpu"


def _probed(evaluation):
    @functools.wraps(evaluation)
    def wrapper(self, model, data_loader, *args, **kwargs):
        device = _model_device(model)
        enabled = torch.is_autocast_enabled(device)
        record = {"task": type(self).__name__, "device": device, "autocast": enabled,
                  "dtype": str(torch.get_autocast_dtype(device)).replace("torch.", "") if enabled else None,
                  "forced": False}
        force = os.environ.get(FORCE_ENV)
        context = contextlib.nullcontext()
        if force and not enabled:
            context = torch.autocast(device_type=device, dtype=_DTYPES[force])
            record.update(forced=True, dtype=force)
        if os.environ.get(PROBE_ENV):
            with open(os.environ[PROBE_ENV], "a") as f:
                f.write(json.dumps(record) + "\n")
        with context:
            return evaluation(self, model, data_loader, *args, **kwargs)

    wrapper._gpu_check_probe = True
    return wrapper


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def install_probe() -> None:
    """Wrap ``evaluation`` of BaseTask and of every task class that defines its own."""
    import vlft.tasks  # noqa: F401  (registers every task class)
    from vlft.tasks.base_task import BaseTask

    for cls in [BaseTask, *_subclasses(BaseTask)]:
        own = cls.__dict__.get("evaluation")
        if own is not None and not getattr(own, "_gpu_check_probe", False):
            cls.evaluation = _probed(own)


def main_with_process_group() -> int:
    import torch.distributed as dist

    from vlft.launch import main_train

    backend = os.environ.get(BACKEND_ENV, "gloo")
    if backend == "nccl":  # the object collectives use the current device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, init_method="env://")
    print(f"gpu_check: process group {dist.get_backend()}, world {dist.get_world_size()}", flush=True)
    return main_train(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main_with_process_group())
else:
    install_probe()
