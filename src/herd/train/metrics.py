"""Per-step metrics: JSON Lines on disk, MFU, and a live progress display.

MFU = achieved model FLOP/s / peak FLOP/s. Achieved = tokens/s x FLOPs per token, with
FLOPs per token from ``ModelArgs.flops_per_token`` (6N + 12·L·H·Q·T, as torchtitan and
the PaLM paper count them; activation recomputation is not counted as useful work).
The peak is looked up from the device name (dense, no sparsity) for the training dtype,
or given with ``metrics.peak_flops``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peak FLOP/s by device-name fragment (first match wins; vendor data sheets).
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 PCIE", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 (V100 has no bf16)
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
]
# A rough CPU default per core (AVX-512 FMA, fp32); override with metrics.peak_flops.
CPU_PEAK_FLOPS_PER_CORE = 1e11


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, override: float | None = None) -> float:
    """Peak FLOP/s of one device for matmuls in ``dtype`` (fp32 on GPUs: the TF32 rate, half of bf16)."""
    if override:
        return float(override)
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).upper()
        for fragment, flops in PEAK_BF16_FLOPS:
            if fragment in name:
                return flops if dtype in (torch.bfloat16, torch.float16) else flops / 2
        return 100e12  # an unknown GPU: a middling guess, override with metrics.peak_flops
    return CPU_PEAK_FLOPS_PER_CORE * torch.get_num_threads()


def mfu(tokens_per_second: float, flops_per_token: float, peak: float, world_size: int = 1) -> float:
    """Model FLOPs utilisation in [0, 1] of ``world_size`` devices of ``peak`` FLOP/s each."""
    return tokens_per_second * flops_per_token / (peak * world_size)


class MetricsLog:
    """Appends one JSON object per line to ``path`` (only on the process that writes it)."""

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._file = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (left by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._file = self.path.open("a", buffering=1)
        self._file.write(json.dumps(strict_json(record), allow_nan=False) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def strict_json(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each NaN or infinite float as null (plain JSON has no NaN: a NaN loss
    would make the line unreadable to jq, pandas' strict parsers and JavaScript), and
    ``"nonfinite": [keys]`` naming the values that were so."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics file; later records of a step replace earlier ones."""
    by_step: dict[int, dict[str, Any]] = {}
    others = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "step" in record:
            by_step[record["step"]] = record
        else:
            others.append(record)
    return [by_step[s] for s in sorted(by_step)] + others


class StepTimer:
    """Wall time per step (synchronising CUDA so the time is the GPU's)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()

    def reset(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


class Progress:
    """A live rich progress bar with the latest loss, lr, tokens/s and MFU; silent when disabled."""

    def __init__(self, total: int, *, enabled: bool, start: int = 0) -> None:
        self.enabled = enabled
        self._progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=start, info="")
        self._progress.start()

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self._progress is None:
            return
        info = f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  {record['tokens_per_s']:,.0f} tok/s"
        if record.get("mfu") is not None:
            info += f"  MFU {100 * record['mfu']:.1f}%"
        self._progress.update(self._task, completed=step, info=info)

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
