"""Average the model weights of a run's last K training checkpoints (Llama 3 averaged its
annealing checkpoints, and the final checkpoints of each post-training round).

    model, steps = average_run_checkpoints("runs/base-kjv", last=5)
    save_pretrained(model, "out/", tokenizer=...)

The checkpoints are the run's DCP step directories (``checkpoints/step-NNNNNN``); each is
verified against its manifest first (a corrupt one is an error, not silently skipped: an
average is only what it says it is). Weights are summed in fp32, one checkpoint in memory at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from herd.model import ModelArgs
from herd.model.transformer import Transformer
from herd.train.checkpointing import Checkpointer, step_dir_name, verify_manifest
from herd.train.config import Config, from_dict


def run_config(run_dir: str | os.PathLike) -> Config:
    """The config a run was started with (``RUN_DIR/config.json``, written by the trainer)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a herd pretrain run directory?")
    return from_dict(json.loads(path.read_text()), where=str(path))


def run_model_args(cfg: Config) -> ModelArgs:
    return ModelArgs.from_name(cfg.model.preset, **cfg.model.overrides)


def normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Averaging weights that sum to 1 (uniform when None); an error names a bad list."""
    if n < 1:
        raise ValueError("nothing to average")
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]],
                        weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The weighted mean (uniform by default) of state dicts with the same keys and shapes."""
    weights = normalised_weights(weights, len(states))
    out: dict[str, torch.Tensor] = {}
    for i, (state, w) in enumerate(zip(states, weights, strict=True)):
        if set(state) != set(states[0]):
            raise ValueError(f"state dict {i} differs in keys from the first: "
                             f"{sorted(set(state) ^ set(states[0]))[:3]}")
        for key, value in state.items():
            if key not in out:
                out[key] = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
            elif value.shape != out[key].shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} in state dict {i}, "
                                 f"{tuple(out[key].shape)} in the first")
            out[key].add_(value.float(), alpha=w)
    return {k: v.to(states[0][k].dtype) for k, v in out.items()}


def average_run_checkpoints(run_dir: str | os.PathLike, *, last: int = 5, steps: Sequence[int] | None = None,
                            weights: Sequence[float] | None = None) -> tuple[Transformer, list[int]]:
    """The model whose weights average the run's last ``last`` checkpoints (or the ``steps``
    named), on CPU in fp32, and the steps averaged."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    args = run_model_args(cfg)
    ckpt = Checkpointer(run_dir / "checkpoints")
    available = ckpt.steps()
    if steps is None:
        if last < 1:
            raise ValueError(f"last must be >= 1, got {last}")
        steps = available[-last:]
    missing = [s for s in steps if s not in available]
    if missing or not steps:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'}: no checkpoint for step(s) {missing or 'any'}; "
                                f"available: {available}")
    weights = normalised_weights(weights, len(steps))
    average, model = Transformer(args), Transformer(args)  # fp32; one checkpoint in memory at a time
    with torch.no_grad():
        for p in average.parameters():
            p.zero_()
        for step, w in zip(steps, weights, strict=True):
            path = run_dir / "checkpoints" / step_dir_name(step)
            verify_manifest(path)
            ckpt.load(path, model, None, rng=False)
            for acc, p in zip(average.parameters(), model.parameters(), strict=True):  # tied tensors once
                acc.add_(p.float(), alpha=w)
    return average, list(steps)
