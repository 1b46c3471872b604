"""Runners, strategies, schedulers; importing this registers them."""
from vlft.runners import lr_schedulers  # noqa: F401  (registers the schedulers)
from vlft.runners.runner_base import RunnerBase
from vlft.runners.runner_deepspeed import RunnerDeepSpeed
from vlft.runners.runner_iter import RunnerIter

__all__ = ["RunnerBase", "RunnerIter", "RunnerDeepSpeed"]
