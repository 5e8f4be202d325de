"""Loss faults: NaN/inf and spikes, and what to do about them.

Before each optimizer update the loop asks ``FaultMonitor.check(step, loss, grad_norm)``.
A loss (or grad norm) that is NaN or infinite is a fault; so is a loss more than
``spike_zscore`` standard deviations above the mean of the last ``window`` accepted
losses. The configured action is then taken by the loop:

- ``skip``: drop this batch's update (gradients zeroed, parameters and optimizer state
  unchanged), go on with the next batch;
- ``rollback``: reload the last good checkpoint's model, optimizer and schedule, keep the
  data loader where it is (the batches since that checkpoint are skipped, not replayed);
- ``raise``: stop with ``TrainingFault``; ``ignore``: log it and update anyway.

More than ``max_consecutive`` faulty steps in a row raises whatever the action. The
monitor's state (the window, the counters, injected faults) is saved with checkpoints, so
a resumed run takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from herd.train.config import FaultConfig


class TrainingFault(RuntimeError):
    """Training cannot go on (action ``raise``, or too many faults in a row)."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # "nan", "spike"
    zscore: float | None = None


class FaultMonitor:
    def __init__(self, cfg: FaultConfig) -> None:
        self.cfg = cfg
        self.window: deque[float] = deque(maxlen=max(1, cfg.window))
        self.consecutive = 0
        self.total_faults = 0
        self.injected: set[int] = set()

    def inject(self, step: int) -> bool:
        """True once for each step of ``inject_nan_at`` (a test hook: the loop poisons that loss)."""
        if step in self.cfg.inject_nan_at and step not in self.injected:
            self.injected.add(step)
            return True
        return False

    def check(self, step: int, loss: float, grad_norm: float | None = None) -> Verdict:
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            return self._fault(Verdict(False, "nan"))
        if self.cfg.spike_zscore > 0 and len(self.window) >= max(2, self.cfg.min_window):
            mean = sum(self.window) / len(self.window)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.window) / len(self.window))
            z = (loss - mean) / max(std, 1e-6 * max(1.0, abs(mean)))
            if z > self.cfg.spike_zscore:
                return self._fault(Verdict(False, "spike", z))
        self.consecutive = 0
        self.window.append(loss)
        return Verdict(True)

    def _fault(self, verdict: Verdict) -> Verdict:
        self.consecutive += 1
        self.total_faults += 1
        if self.cfg.action == "raise":
            raise TrainingFault(f"loss fault ({verdict.reason}) and faults.action = 'raise'")
        if self.consecutive > self.cfg.max_consecutive:
            raise TrainingFault(f"{self.consecutive} faulty steps in a row (faults.max_consecutive = "
                                f"{self.cfg.max_consecutive}); last: {verdict.reason}")
        return verdict

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "consecutive": self.consecutive,
                "total_faults": self.total_faults, "injected": sorted(self.injected)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = deque(state["window"], maxlen=max(1, self.cfg.window))
        self.consecutive = state["consecutive"]
        self.total_faults = state["total_faults"]
        self.injected = set(state["injected"])
