"""Iteration-based training (LAVIS's ``runner_iter``): ``max_iters`` optimizer steps,
validation and checkpoints every ``iters_per_inner_epoch`` steps, and a data stream
that runs on across passes over the data instead of restarting at each inner epoch.

``val_freq`` and ``save_freq`` count inner epochs from 1, as LAVIS's runner_iter does
(``(end_iters // iters_per_inner_epoch) % val_freq == 0``): with ``val_freq: 2`` the
validations follow inner epochs 2, 4, ... Snapshots are named by step
(``checkpoint_<step>.pth``, LAVIS's ``checkpoint_<end_iters>.pth``). LAVIS's runner_iter
ignores ``save_freq`` and keeps a numbered checkpoint after every inner epoch; vlft
honours it (``save_freq: 1`` gives LAVIS's files).
"""
from __future__ import annotations

from typing import Optional, Tuple

from vlft.common.registry import registry
from vlft.runners.runner_base import RunnerBase


@registry.register_runner("runner_iter")
class RunnerIter(RunnerBase):
    def schedule(self, batches_per_pass: int) -> Tuple[int, int, int]:
        return self.run_cfg.max_iters, self.run_cfg.iters_per_inner_epoch, batches_per_pass

    def validates_after(self, inner: int) -> bool:
        return (inner + 1) % self.run_cfg.get("val_freq", 1) == 0

    def snapshot_name(self, inner: int) -> Optional[str]:
        freq = self.run_cfg.get("save_freq", -1)
        return f"checkpoint_{self.progress.step}.pth" if freq > 0 and (inner + 1) % freq == 0 else None
