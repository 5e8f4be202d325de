"""Learning-rate schedules and the batch-size ramp, as pure functions of the step.

Both are plain callables of the optimizer step (0-based: the lr used by update ``step``),
so resuming needs nothing but the step, and a plot can draw them ahead of a run.

- ``cosine``: linear warmup from 0 to the peak, then a half cosine down to
  ``peak * min_lr_ratio`` (Llama 3 405B: 8,000 warmup steps, cosine down to 0.01 x peak).
- ``wsd`` (warmup-stable-decay): warmup, a constant stretch, and a final decay over the last
  ``decay_fraction`` of the steps (linear, cosine or 1-sqrt shape) — what Llama 3's
  annealing phase does at the end of pre-training.
- ``constant``: warmup, then flat.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from herd.train.config import ScheduleConfig


@dataclass(frozen=True)
class LRSchedule:
    """lr multiplier (of the peak lr) at an optimizer step."""

    kind: str
    total_steps: int
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_steps: int | None = None
    decay_fraction: float = 0.2
    wsd_decay_shape: str = "linear"

    @classmethod
    def from_config(cls, cfg: ScheduleConfig, total_steps: int) -> LRSchedule:
        return cls(cfg.kind, total_steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_steps,
                   cfg.decay_fraction, cfg.wsd_decay_shape)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        lo = self.min_lr_ratio
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = self.decay_steps or max(1, self.total_steps - self.warmup_steps - 1)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "wsd":
            decay_len = max(1, round(self.decay_fraction * self.total_steps))
            decay_start = max(self.warmup_steps, self.total_steps - decay_len)
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start + 1) / max(1, self.total_steps - decay_start))
            if self.wsd_decay_shape == "linear":
                frac = 1 - progress
            elif self.wsd_decay_shape == "cosine":
                frac = 0.5 * (1 + math.cos(math.pi * progress))
            elif self.wsd_decay_shape == "sqrt":
                frac = 1 - math.sqrt(progress)
            else:
                raise ValueError(f"schedule.wsd_decay_shape: unknown shape {self.wsd_decay_shape!r}")
            return lo + (1 - lo) * frac
        raise ValueError(f"schedule.kind: unknown schedule {self.kind!r} (cosine, wsd, constant)")


class Scheduler:
    """Sets every param group's lr to ``peak_lr * schedule(step)`` before update ``step``.

    Its state is just the step: the schedule itself comes from the config, so a run
    resumed with more steps or another peak lr follows the new schedule from where it is.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule, peak_lr: float) -> None:
        self.optimizer, self.schedule, self.peak_lr = optimizer, schedule, peak_lr
        self.step = 0

    def apply(self, step: int) -> float:
        """Set the lr for update ``step`` (0-based); returns it."""
        self.step = step
        lr = self.peak_lr * self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"step": self.step, "peak_lr": self.peak_lr, "schedule": dataclasses.asdict(self.schedule)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int,
                    peak_lr: float) -> Scheduler:
    return Scheduler(optimizer, LRSchedule.from_config(cfg, total_steps), peak_lr)


@dataclass(frozen=True)
class BatchRamp:
    """Global batch rows per step: ``base_rows``, then each ``[step, rows]`` stage from its step on.

    Llama 3 405B started at 4M tokens per batch, went to 8M after 252M tokens and to 16M
    after 2.87T tokens; here the stages are given in steps.
    """

    base_rows: int
    stages: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_config(cls, base_rows: int, ramp: list[list[int]]) -> BatchRamp:
        stages = tuple(sorted((int(s), int(r)) for s, r in ramp))
        return cls(base_rows, stages)

    def __call__(self, step: int) -> int:
        rows = self.base_rows
        for start, stage_rows in self.stages:
            if step >= start:
                rows = stage_rows
        return rows

    def all_sizes(self) -> list[int]:
        return [self.base_rows] + [r for _, r in self.stages]
