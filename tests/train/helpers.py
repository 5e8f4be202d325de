"""Shared helpers for the training tests: a tiny run config and reading runs back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from herd.train.config import Config, from_dict
from herd.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def tiny_raw(run_dir: Path, **sections) -> dict:
    """A tiny-model synthetic-data run as nested dicts; ``sections`` update them."""
    raw = {
        "run_dir": str(run_dir),
        "model": {"preset": "tiny-nope"},
        "data": {"kind": "synthetic", "seq_len": 32},
        "train": {"steps": 8, "global_batch_rows": 4, "micro_batch_rows": 4, "threads": 1, "seed": 0},
        "optim": {"lr": 3e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "checkpoint": {"every": 0, "export": False},
        "metrics": {"progress": "off"},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return raw


def tiny_config(run_dir: Path, **sections) -> Config:
    return from_dict(tiny_raw(run_dir, **sections)).validate()


def write_toml(path: Path, raw: dict) -> Path:
    """A minimal TOML writer for these flat configs (tables of scalars and lists)."""
    lines = []
    for key, value in raw.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in raw.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "step" in r}


def cli_command(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "herd.cli", "pretrain", str(config), *overrides]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONPATH"] = str(REPO / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_cli(config: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(config, *overrides), env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
