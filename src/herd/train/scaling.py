"""Scaling laws the Llama 3 way: IsoFLOP curves, compute-optimal tokens, loss prediction.

For each compute budget C, models of several sizes are trained on D = C / (6N) tokens.
A parabola of loss against ln D through each budget's runs gives that budget's minimum
(C, D*, N* = C / (6 D*), L*). Across budgets, D*(C) = A * C^alpha is a straight line in
log-log space (Llama 3: alpha ~ 0.53, A ~ 0.29, which put 405B parameters on 16.55T
tokens at 3.8e25 FLOPs). The minimum loss is fitted as L*(C) = E + B * C^-beta, an
irreducible term plus a power law: for each E on a grid below the smallest L*, ln(L* - E)
is a line in ln C; the E whose line fits L* best wins (with fewer than three budgets, E = 0).

``plan_isoflop_grid`` picks the models and token counts of such a study from a base
shape (depth and width grown together, head size fixed), ``run_isoflop_grid`` trains
each point with any ``train_fn(point) -> loss`` (the trainer's Python API), recording
results as JSON Lines that ``read_runs`` / ``fit_isoflop`` take back.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from herd.model import ModelArgs

if TYPE_CHECKING:
    from herd.train.config import Config


@dataclass(frozen=True)
class Run:
    """One finished training run: FLOPs spent, parameters (non-embedding, as in C = 6ND),
    tokens seen, final validation loss."""

    compute_flops: float
    params: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class IsoFlopMinimum:
    compute_flops: float
    tokens: float  # D*
    params: float  # N* = C / (6 D*)
    loss: float  # L*
    parabola: tuple[float, float, float]  # loss = p0 * x^2 + p1 * x + p2, x = ln(tokens)
    n_runs: int


@dataclass
class ScalingFit:
    minima: list[IsoFlopMinimum]
    alpha: float  # D*(C) = A * C^alpha
    A: float
    loss_E: float  # L*(C) = E + B * C^-beta
    loss_B: float
    loss_beta: float
    runs: list[Run] = field(default_factory=list, repr=False)

    def optimal_tokens(self, compute_flops: float) -> float:
        return self.A * compute_flops**self.alpha

    def optimal_params(self, compute_flops: float) -> float:
        return compute_flops / (6 * self.optimal_tokens(compute_flops))

    def predict_loss(self, compute_flops: float) -> float:
        return self.loss_E + self.loss_B * compute_flops ** (-self.loss_beta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens_law": {"A": self.A, "alpha": self.alpha, "formula": "D* = A * C^alpha"},
            "params_law": {"formula": "N* = C / (6 D*) = C^(1-alpha) / (6A)"},
            "loss_law": {"E": self.loss_E, "B": self.loss_B, "beta": self.loss_beta,
                         "formula": "L* = E + B * C^-beta"},
            "minima": [asdict(m) for m in self.minima],
            "n_runs": len(self.runs),
        }


# -- fitting ------------------------------------------------------------------------------


def group_by_budget(runs: Iterable[Run], rel_tol: float = 0.05) -> list[list[Run]]:
    """Runs grouped by compute budget: sorted by compute, a new group whenever a run's
    compute is more than ``rel_tol`` above the group's first."""
    groups: list[list[Run]] = []
    for run in sorted(runs, key=lambda r: r.compute_flops):
        if groups and run.compute_flops <= groups[-1][0].compute_flops * (1 + rel_tol):
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


def parabola_minimum(runs: Sequence[Run]) -> IsoFlopMinimum:
    """The minimum of a parabola fitted to loss vs ln(tokens) through one budget's runs."""
    compute = float(np.exp(np.mean([math.log(r.compute_flops) for r in runs])))
    if len({r.tokens for r in runs}) < 3:
        raise ValueError(f"budget {compute:.3g} FLOPs: need runs at 3 or more token counts for a parabola, "
                         f"got {len(runs)}")
    x = np.log([r.tokens for r in runs])
    y = np.array([r.loss for r in runs])
    p0, p1, p2 = np.polyfit(x, y, 2)
    if p0 <= 0:
        raise ValueError(f"budget {compute:.3g} FLOPs: the loss has no minimum over ln(tokens) "
                         "(the parabola opens downward); add runs on both sides of the optimum")
    x_min = -p1 / (2 * p0)
    tokens = math.exp(x_min)
    return IsoFlopMinimum(compute_flops=compute, tokens=tokens, params=compute / (6 * tokens),
                          loss=float(p2 - p1 * p1 / (4 * p0)), parabola=(float(p0), float(p1), float(p2)),
                          n_runs=len(runs))


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(A, alpha)`` of y = A * x^alpha, by least squares on ln y vs ln x."""
    alpha, ln_a = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(ln_a)), float(alpha)


def fit_loss_law(compute: Sequence[float], loss: Sequence[float], grid: int = 4000) -> tuple[float, float, float]:
    """``(E, B, beta)`` of L = E + B * C^-beta; E = 0 with fewer than three points."""
    c, l_ = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    if len(c) < 3:
        b, neg_beta = fit_power_law(c, l_)
        return 0.0, b, -neg_beta
    e = np.linspace(0.0, l_.min(), grid, endpoint=False)[:, None]  # candidate E, one per row
    x, y = np.log(c)[None, :], np.log(l_[None, :] - e)
    xm, ym = x.mean(), y.mean(axis=1, keepdims=True)
    slope = ((x - xm) * (y - ym)).sum(axis=1, keepdims=True) / ((x - xm) ** 2).sum()
    ln_b = ym - slope * xm
    err = ((e + np.exp(ln_b + slope * x) - l_[None, :]) ** 2).sum(axis=1)
    i = int(np.argmin(err))
    return float(e[i, 0]), float(math.exp(ln_b[i, 0])), float(-slope[i, 0])


def fit_isoflop(runs: Iterable[Run], *, rel_tol: float = 0.05) -> ScalingFit:
    """Fit the IsoFLOP minima, D*(C) = A C^alpha and L*(C) = E + B C^-beta to ``runs``
    (at least two budgets of at least three runs each)."""
    runs = list(runs)
    for i, r in enumerate(runs):
        for name in ("compute_flops", "params", "tokens", "loss"):
            value = getattr(r, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"run {i}: {name} must be a positive finite number, got {value!r}")
    minima = [parabola_minimum(g) for g in group_by_budget(runs, rel_tol)]
    if len(minima) < 2:
        raise ValueError(f"need at least 2 compute budgets to fit a scaling law, got {len(minima)}")
    a, alpha = fit_power_law([m.compute_flops for m in minima], [m.tokens for m in minima])
    e, b, beta = fit_loss_law([m.compute_flops for m in minima], [m.loss for m in minima])
    return ScalingFit(minima=minima, alpha=alpha, A=a, loss_E=e, loss_B=b, loss_beta=beta, runs=runs)


# -- planning and running a grid ------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    name: str
    compute_flops: float
    args: ModelArgs
    params: int  # non-embedding parameters (the LM head included): the N of C = 6ND
    tokens: int


def compute_params(args: ModelArgs) -> int:
    """Parameters that cost FLOPs per token: all but the input embedding table."""
    return args.num_params(include_embedding=False)


def model_family(base: ModelArgs, *, min_layers: int = 2, max_layers: int = 48) -> list[ModelArgs]:
    """Shapes grown from ``base``: depth from ``min_layers`` to ``max_layers``, width
    keeping base's dim / n_layers, head size and GQA ratio (rounded to whole heads)."""
    ratio, hd = base.dim / base.n_layers, base.head_dim
    group = base.n_heads // base.n_kv_heads
    family = []
    for layers in range(min_layers, max_layers + 1):
        heads = max(group, round(ratio * layers / hd / group) * group)
        family.append(base.replace(n_layers=layers, dim=heads * hd, n_heads=heads, n_kv_heads=heads // group,
                                   hidden_dim=None, head_dim_override=None))
    return family


def plan_isoflop_grid(budgets: Sequence[float], base: ModelArgs, *, points_per_budget: int = 7,
                      tokens_per_param: float = 20.0, spread: float = 8.0,
                      family: Sequence[ModelArgs] | None = None) -> list[GridPoint]:
    """Models and token counts for an IsoFLOP study: per budget C, up to
    ``points_per_budget`` shapes of ``family`` (default: :func:`model_family` of ``base``)
    whose sizes are log-spaced over a factor ``spread`` either side of the size that
    would see ``tokens_per_param`` tokens per parameter, each trained on D = C / (6N)."""
    if points_per_budget < 3:
        raise ValueError(f"points_per_budget must be >= 3 to fit a parabola, got {points_per_budget}")
    family = list(family) if family is not None else model_family(base)
    sizes = np.log([compute_params(a) for a in family])
    plan = []
    for c in budgets:
        if c <= 0:
            raise ValueError(f"compute budgets must be positive, got {c}")
        center = math.log(math.sqrt(c / (6 * tokens_per_param)))
        targets = center + np.linspace(-1, 1, points_per_budget) * math.log(spread)
        chosen = sorted({int(np.argmin(np.abs(sizes - t))) for t in targets})
        if len(chosen) < 3:
            raise ValueError(f"budget {c:.3g}: the model family gives fewer than 3 distinct sizes around "
                             f"{math.exp(center):.3g} parameters; widen it (min_layers / max_layers)")
        for i in chosen:
            args = family[i]
            n = compute_params(args)
            plan.append(GridPoint(name=f"C{c:.2e}-L{args.n_layers}-d{args.dim}", compute_flops=float(c), args=args,
                                  params=n, tokens=max(1, round(c / (6 * n)))))
    return plan


def run_isoflop_grid(plan: Sequence[GridPoint], train_fn: Callable[[GridPoint], float],
                     results: str | os.PathLike | None = None) -> list[Run]:
    """Train every point with ``train_fn(point) -> final loss``; with ``results``, append
    each finished run to that JSON Lines file and skip points it already holds (resume)."""
    done = {r["name"]: r for r in _read_jsonl(Path(results))} if results and Path(results).exists() else {}
    runs = []
    for point in plan:
        if point.name in done:
            record = done[point.name]
        else:
            loss = float(train_fn(point))
            if not math.isfinite(loss):
                raise ValueError(f"{point.name}: train_fn returned a non-finite loss {loss}")
            record = {"name": point.name, "compute": point.compute_flops, "params": point.params,
                      "tokens": point.tokens, "loss": loss}
            if results:
                with open(results, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
        runs.append(_run_of(record, point.name))
    return runs


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
    return records


def _run_of(record: dict[str, Any], where: str) -> Run:
    try:
        compute = record["compute"] if "compute" in record else record["compute_flops"]
        return Run(float(compute), float(record["params"]), float(record["tokens"]), float(record["loss"]))
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e.args[0]!r} (need compute, params, tokens, loss)") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: compute, params, tokens and loss must be numbers") from None


def read_runs(path: str | os.PathLike) -> list[Run]:
    """Runs from JSON Lines ``{"compute", "params", "tokens", "loss"}`` (``compute_flops`` also read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"runs file not found: {path}")
    return [_run_of(r, f"{path}, record {i}") for i, r in enumerate(_read_jsonl(path), 1)]


# -- plotting -----------------------------------------------------------------------------


def plot_isoflop(fit: ScalingFit, path: str | os.PathLike) -> None:
    """IsoFLOP curves (loss vs tokens per budget, with the parabolas and their minima) and
    the compute-optimal tokens against compute with the fitted power law, as a PNG."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'herd[plot]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(fit.minima)))
    for group, m, color in zip(group_by_budget(fit.runs), fit.minima, colors, strict=False):
        left.scatter([r.tokens for r in group], [r.loss for r in group], color=color, s=18)
        x = np.linspace(min(math.log(r.tokens) for r in group), max(math.log(r.tokens) for r in group), 100)
        left.plot(np.exp(x), np.polyval(m.parabola, x), color=color, label=f"{m.compute_flops:.1e} FLOPs")
        left.scatter([m.tokens], [m.loss], color=color, marker="*", s=120, edgecolor="black", zorder=3)
    left.set(xscale="log", xlabel="training tokens", ylabel="validation loss", title="IsoFLOP curves")
    left.legend(fontsize=8)
    c = np.array([m.compute_flops for m in fit.minima])
    right.scatter(c, [m.tokens for m in fit.minima], color="black", zorder=3, label="IsoFLOP minima")
    line = np.geomspace(c.min() / 3, c.max() * 30, 50)
    right.plot(line, fit.optimal_tokens(line), label=f"D* = {fit.A:.3g} C^{fit.alpha:.3f}")
    right.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", ylabel="compute-optimal tokens",
              title="Compute-optimal training tokens")
    right.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def pretrain_train_fn(base: Config, out_dir: str | os.PathLike, *,
                      heldout: Sequence[str | os.PathLike] | None = None,
                      heldout_tokens: int | None = 65536) -> Callable[[GridPoint], float]:
    """A ``train_fn`` for :func:`run_isoflop_grid` that trains each point with herd's own
    trainer: ``base`` with the point's model shape and as many steps as its token budget
    needs (``global_batch_rows * seq_len`` tokens per step, rounded up), in
    ``out_dir/<point name>``. The loss it returns is the held-out loss of the final model on
    ``heldout`` shards when given, else the mean training loss of the last 10% of steps
    (single-epoch data makes the two close)."""
    from herd.train.heldout import heldout_loss
    from herd.train.loop import pretrain

    def train(point: GridPoint) -> float:
        cfg = copy.deepcopy(base)
        tokens_per_step = cfg.train.global_batch_rows * cfg.data.seq_len
        cfg.run_dir = str(Path(out_dir) / point.name)
        cfg.model.overrides = asdict(point.args)
        cfg.train.steps = max(1, math.ceil(point.tokens / tokens_per_step))
        cfg.train.batch_ramp = []
        cfg.checkpoint.export = heldout is not None
        cfg.schedule.warmup_steps = min(cfg.schedule.warmup_steps, cfg.train.steps // 5)
        result = pretrain(cfg.validate())
        if heldout is not None:
            from herd.checkpoint import load_pretrained

            model = load_pretrained(result.export_dir, dtype=torch.float32)
            return heldout_loss(model, heldout, seq_len=cfg.data.seq_len, max_tokens=heldout_tokens).loss
        losses = [loss for _, loss in sorted(result.losses.items())]
        tail = losses[-max(1, len(losses) // 10):]
        return float(sum(tail) / len(tail))

    return train
