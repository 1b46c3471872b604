"""``runner_deepspeed``: the epoch runner with the DeepSpeed strategy, for configs
written for MiniGPT4-Qwen's ``deepspeed_runner``. Any runner uses DeepSpeed when
``run.deepspeed_config`` is set; this name only makes it the default."""
from __future__ import annotations

from vlft.common.registry import registry
from vlft.runners.runner_base import RunnerBase


@registry.register_runner("runner_deepspeed")
@registry.register_runner("deepspeed_runner")
class RunnerDeepSpeed(RunnerBase):
    pass
