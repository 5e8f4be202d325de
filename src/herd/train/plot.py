"""``herd plot RUN_DIR``: loss and learning-rate curves of a run, as one PNG (matplotlib Agg)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from herd.train.metrics import read_metrics


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw loss (with faulty steps marked) and lr against step from ``run_dir/metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (is {run_dir} a herd run directory?)")
    records = [r for r in read_metrics(path) if "step" in r]
    if not records:
        raise ValueError(f"{path} holds no step records")
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    ok = [(s, r["loss"]) for s, r in zip(steps, records, strict=True) if "fault" not in r and r["loss"] is not None]
    bad = [(s, r["loss"]) for s, r in zip(steps, records, strict=True) if "fault" in r]
    ax_loss.plot([s for s, _ in ok], [v for _, v in ok], lw=1.2, label="loss")
    if bad:
        top = max((v for _, v in ok if v is not None), default=0.0)  # non-finite losses are null: draw them on top
        finite = [(s, v if v is not None and math.isfinite(v) else top) for s, v in bad]
        ax_loss.scatter([s for s, _ in finite], [v for _, v in finite], color="red", marker="x", label="fault")
    ax_loss.set_ylabel("loss (nats / token)")
    ax_loss.set_title(run_dir.name)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in records], color="tab:orange", lw=1.2)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / "curves.png"
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out
