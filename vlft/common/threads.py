"""How many CPU threads torch's intra-op pool gets (``run.num_threads``).

torch starts one thread per core in *every* process: four ranks on a 16-core node
run 64 compute threads, plus the DataLoader workers, and the threads spin against
each other. On a busy machine the issue that added this measured the caption demo
at 345 s with torch's default threads and 37 s with one. ``auto`` gives each process
its share of the cores this process may run on (``os.sched_getaffinity``): the cores
divided by the processes on this node, minus one per DataLoader worker (each worker
runs one thread), at least 1, and never more than this process already set
(``torch.set_num_threads`` before the runner). An explicit ``$OMP_NUM_THREADS`` is the
user's choice and is kept.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Tuple

import torch

logger = logging.getLogger(__name__)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes of this job on this node (torchrun, the deepspeed launcher, srun)."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def resolve_num_threads(setting: Any, num_workers: int) -> Tuple[int, str]:
    """(threads, why) for ``run.num_threads``: ``auto``/None, 0 (torch's own default), or N."""
    if setting not in (None, "auto"):
        try:
            n = int(setting)
        except (TypeError, ValueError):
            n = -1
        if n < 0:
            raise ValueError(f"run.num_threads must be auto, 0 (torch's default) or a positive count, not {setting}")
        return (n, f"run.num_threads={n}") if n else (torch.get_num_threads(), "run.num_threads=0: torch's own count")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), f"run.num_threads=auto, OMP_NUM_THREADS={env}"
    cores, procs = usable_cores(), local_processes()
    n = max(1, cores // procs - num_workers)
    why = (f"run.num_threads=auto, {cores} core{'s' * (cores != 1)}, {procs} process{'es' * (procs != 1)}, "
           f"{num_workers} worker{'s' * (num_workers != 1)}")
    current = torch.get_num_threads()
    if current < n:  # lowered earlier in this process (torch.set_num_threads): auto never raises it
        return current, why + f"; kept at the {current} set earlier in this process"
    return n, why


def apply_num_threads(run_cfg: Any) -> int:
    """Set torch's intra-op threads from ``run.num_threads`` and log the choice."""
    n, why = resolve_num_threads(run_cfg.get("num_threads", "auto"), int(run_cfg.get("num_workers", 0) or 0))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    logger.info("torch threads: %d (%s)", n, why)
    return n
