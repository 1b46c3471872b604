"""Learning-rate schedules stepped once per optimizer step.

Unlike LAVIS (cosine per epoch, warm-up inside epoch 0 only) the schedule is a pure
function of the global step, so warm-up may span epochs and a resumed run lands on
exactly the same learning rate. Each param group's ``lr_scale`` multiplies the lr
(that is how module multipliers and layer-wise decay reach the optimizer).
"""
from __future__ import annotations

import math

from vlft.common.registry import registry


class BaseLRScheduler:
    def __init__(self, optimizer, total_steps: int, steps_per_epoch: int, init_lr: float, min_lr: float = 0.0,
                 warmup_lr: float = 0.0, warmup_steps: int = 0, decay_rate: float = 0.9):
        self.optimizer = optimizer
        self.total_steps = max(int(total_steps), 1)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.init_lr, self.min_lr, self.warmup_lr = init_lr, min_lr, warmup_lr
        self.warmup_steps, self.decay_rate = int(warmup_steps), decay_rate
        self.last_step = -1

    @classmethod
    def from_config(cls, optimizer, run_cfg, total_steps: int, steps_per_epoch: int) -> "BaseLRScheduler":
        return cls(optimizer, total_steps, steps_per_epoch, init_lr=run_cfg.init_lr, min_lr=run_cfg.min_lr,
                   warmup_lr=run_cfg.warmup_lr, warmup_steps=run_cfg.warmup_steps, decay_rate=run_cfg.lr_decay_rate)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        return self.after_warmup(step)

    def after_warmup(self, step: int) -> float:
        raise NotImplementedError

    def step(self, step: int) -> float:
        """Set the learning rate for optimizer step ``step`` (0-based); return it."""
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = state["last_step"]


@registry.register_lr_scheduler("linear_warmup_cosine_lr")
class LinearWarmupCosineLRScheduler(BaseLRScheduler):
    """Linear warm-up to ``init_lr``, then a half cosine down to ``min_lr`` at the last step."""

    def after_warmup(self, step: int) -> float:
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@registry.register_lr_scheduler("linear_warmup_step_lr")
class LinearWarmupStepLRScheduler(BaseLRScheduler):
    """Linear warm-up, then ``init_lr * lr_decay_rate ** epoch`` floored at ``min_lr``."""

    def after_warmup(self, step: int) -> float:
        epoch = step // self.steps_per_epoch
        return max(self.min_lr, self.init_lr * self.decay_rate ** epoch)


@registry.register_lr_scheduler("constant_lr")
class ConstantLRScheduler(BaseLRScheduler):
    """Linear warm-up, then ``init_lr``."""

    def after_warmup(self, step: int) -> float:
        return self.init_lr
