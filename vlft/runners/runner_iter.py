"""Iteration-based training (LAVIS's ``runner_iter``): ``max_iters`` optimizer steps,
validation and checkpoints every ``iters_per_inner_epoch`` steps, and a data stream
that runs on across passes over the data instead of restarting at each inner epoch."""
from __future__ import annotations

from typing import Tuple

from vlft.common.registry import registry
from vlft.runners.runner_base import RunnerBase


@registry.register_runner("runner_iter")
class RunnerIter(RunnerBase):
    def schedule(self, batches_per_pass: int) -> Tuple[int, int, int]:
        return self.run_cfg.max_iters, self.run_cfg.iters_per_inner_epoch, batches_per_pass
