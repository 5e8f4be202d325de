"""IsoFLOP fits on synthetic runs drawn from known laws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from herd.model import ModelArgs
from herd.train.scaling import (
    GridPoint,
    Run,
    compute_params,
    fit_isoflop,
    fit_loss_law,
    parabola_minimum,
    plan_isoflop_grid,
    plot_isoflop,
    read_runs,
    run_isoflop_grid,
)

# The Llama 3 law for the compute-optimal token count, and a made-up loss law.
A, ALPHA = 0.29, 0.53
E, B, BETA = 1.5, 400.0, 0.15
CURVATURE = 0.05  # loss rises by CURVATURE * (ln D - ln D*)^2 off the optimum
BUDGETS = np.geomspace(1e18, 1e20, 5)


def true_tokens(c: float) -> float:
    return A * c**ALPHA


def true_min_loss(c: float) -> float:
    return E + B * c**-BETA


def synthetic_runs(budgets, sigma: float = 0.0, seed: int = 0, n: int = 7, spread: float = 8.0) -> list[Run]:
    """n runs per budget, tokens log-spaced over a factor ``spread`` either side of D*,
    losses from the law plus N(0, sigma) noise."""
    rng = np.random.default_rng(seed)
    runs = []
    for c in budgets:
        for d in np.geomspace(true_tokens(c) / spread, true_tokens(c) * spread, n):
            loss = true_min_loss(c) + CURVATURE * math.log(d / true_tokens(c)) ** 2 + rng.normal(0, sigma)
            runs.append(Run(float(c), c / (6 * d), float(d), float(loss)))
    return runs


def test_parabola_minimum_is_exact_without_noise():
    c = 3e19
    m = parabola_minimum(synthetic_runs([c], n=5))
    assert m.tokens == pytest.approx(true_tokens(c), rel=1e-9)
    assert m.loss == pytest.approx(true_min_loss(c), rel=1e-12)
    assert m.params == pytest.approx(c / (6 * true_tokens(c)), rel=1e-9)
    assert m.parabola[0] == pytest.approx(CURVATURE)


def test_fit_recovers_the_laws_without_noise():
    fit = fit_isoflop(synthetic_runs(BUDGETS))
    assert fit.alpha == pytest.approx(ALPHA, abs=1e-9)
    assert fit.A == pytest.approx(A, rel=1e-9)
    assert fit.loss_E == pytest.approx(E, abs=1e-3)  # E is searched on a grid
    assert fit.loss_beta == pytest.approx(BETA, rel=1e-3)
    assert fit.optimal_params(1e20) == pytest.approx(1e20 / (6 * true_tokens(1e20)), rel=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_fit_recovers_alpha_and_A_from_noisy_losses(seed):
    """Loss noise sigma = 0.005 (about 0.3% of the loss), 5 budgets over 1e18..1e20 FLOPs,
    7 runs each. Over 300 seeds the worst errors were: alpha 0.0135, ln(A/A_true) 0.58,
    D*(1e19) 1.8%, D*(1e22) 10%, L*(1e22) 2.6%. The bounds below sit above them."""
    fit = fit_isoflop(synthetic_runs(BUDGETS, sigma=0.005, seed=seed))
    assert abs(fit.alpha - ALPHA) < 0.02
    assert abs(math.log(fit.A / A)) < 0.75  # A and alpha trade off: ln A moves ~ 44 x alpha's error
    assert abs(math.log(fit.optimal_tokens(1e19) / true_tokens(1e19))) < 0.03
    # a held-out budget 100x above the largest fitted one
    assert abs(math.log(fit.optimal_tokens(1e22) / true_tokens(1e22))) < 0.12
    assert fit.predict_loss(1e22) == pytest.approx(true_min_loss(1e22), rel=0.03)


def test_chinchilla_style_law_gives_its_exponent():
    """Losses L = E + a/N^0.34 + b/D^0.30 (not a parabola in ln D): the compute-optimal
    exponent is 0.34 / (0.34 + 0.30) = 0.531; the parabola fit lands within 0.01."""
    runs = []
    for c in np.geomspace(1e18, 1e21, 6):
        for n in np.geomspace(1e7, 1e11, 41):
            d = c / (6 * n)
            runs.append(Run(float(c), float(n), float(d), 1.7 + 400 / n**0.34 + 410 / d**0.30))
    # keep each budget's 9 runs nearest its optimum, as an IsoFLOP study would
    kept = []
    for c in sorted({r.compute_flops for r in runs}):
        group = sorted((r for r in runs if r.compute_flops == c), key=lambda r: r.loss)[:9]
        kept += group
    fit = fit_isoflop(kept)
    assert fit.alpha == pytest.approx(0.34 / 0.64, abs=0.01)


def test_loss_law_with_two_points_is_a_pure_power_law():
    e, b, beta = fit_loss_law([1e18, 1e20], [3.0, 2.0])
    assert e == 0.0 and b * 1e20**-beta == pytest.approx(2.0)


def test_bad_runs():
    with pytest.raises(ValueError, match="at least 2 compute budgets"):
        fit_isoflop(synthetic_runs([1e19]))
    with pytest.raises(ValueError, match="3 or more token counts"):
        fit_isoflop(synthetic_runs([1e19, 1e20], n=2))
    concave = [Run(1e19, 1e9, d, 3 - 0.1 * math.log(d) ** 2 / 100) for d in (1e9, 1e10, 1e11)]
    with pytest.raises(ValueError, match="no minimum"):
        fit_isoflop(concave + synthetic_runs([1e20]))
    with pytest.raises(ValueError, match="run 0: loss"):
        fit_isoflop([Run(1e19, 1e9, 1e9, float("nan"))])


def test_plot_is_written(tmp_path):
    fit = fit_isoflop(synthetic_runs(BUDGETS, sigma=0.005))
    path = tmp_path / "isoflop.png"
    plot_isoflop(fit, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*tmp*"))


BASE = ModelArgs(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=8448, multiple_of=64,
                 ffn_dim_multiplier=None, max_seq_len=1024)


def test_plan_spans_sizes_at_each_budget():
    budgets = [1e15, 1e16, 1e17]
    plan = plan_isoflop_grid(budgets, BASE, points_per_budget=5)
    for c in budgets:
        points = [p for p in plan if p.compute_flops == c]
        assert len(points) >= 3
        for p in points:
            assert 6 * p.params * p.tokens == pytest.approx(c, rel=1e-3)
            assert p.params == compute_params(p.args) and p.args.head_dim == BASE.head_dim
            assert p.args.n_heads % p.args.n_kv_heads == 0
        sizes = sorted(p.params for p in points)
        assert sizes[-1] / sizes[0] > 4  # a real spread of sizes around the optimum
    assert len({p.name for p in plan}) == len(plan)
    with pytest.raises(ValueError, match="points_per_budget"):
        plan_isoflop_grid(budgets, BASE, points_per_budget=2)


def test_run_grid_with_a_fake_trainer_then_fit(tmp_path):
    """The fake trainer answers with the synthetic law; the grid's runs give back alpha."""
    plan = plan_isoflop_grid([1e15, 1e16, 1e17, 1e18], BASE, points_per_budget=7, spread=6)
    calls = []

    def train_fn(point: GridPoint) -> float:
        calls.append(point.name)
        return true_min_loss(point.compute_flops) + CURVATURE * math.log(point.tokens / true_tokens(
            point.compute_flops)) ** 2

    results = tmp_path / "runs.jsonl"
    runs = run_isoflop_grid(plan[:5], train_fn, results)
    runs = run_isoflop_grid(plan, train_fn, results)  # resumes: the first 5 are not trained again
    assert len(calls) == len(plan) and len(runs) == len(plan)
    assert read_runs(results) == runs
    fit = fit_isoflop(runs)
    assert fit.alpha == pytest.approx(ALPHA, abs=0.02)


def test_read_runs_errors(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"compute": 1e19, "params": 1e9, "tokens": 1e9}) + "\n")
    with pytest.raises(ValueError, match="record 1: missing field 'loss'"):
        read_runs(path)
    path.write_text("{oops\n")
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        read_runs(path)
    with pytest.raises(FileNotFoundError):
        read_runs(tmp_path / "none.jsonl")


def test_cli_scaling(tmp_path):
    from typer.testing import CliRunner

    from herd.cli import app

    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps({"compute": r.compute_flops, "params": r.params, "tokens": r.tokens,
                                        "loss": r.loss}) + "\n" for r in synthetic_runs(BUDGETS, sigma=0.005)))
    out = tmp_path / "fit"
    result = CliRunner().invoke(app, ["scaling", "--runs", str(runs), "--out", str(out), "--predict", "3.8e25"])
    assert result.exit_code == 0, result.output
    fit = json.loads((out / "fit.json").read_text())
    assert fit["tokens_law"]["alpha"] == pytest.approx(ALPHA, abs=0.02)
    assert fit["predictions"][0]["compute"] == 3.8e25
    assert (out / "isoflop.png").stat().st_size > 10_000
    assert "alpha" in result.output
    bad = CliRunner().invoke(app, ["scaling", "--runs", str(tmp_path / "none.jsonl"), "--out", str(out)])
    assert bad.exit_code == 2 and "none.jsonl" in bad.output


def test_grid_trained_by_herd_pretrain(tmp_path):
    """The grid's points go through the real trainer: each run has the point's shape and
    enough steps for its tokens, and the results file resumes. (Runs this small make no
    parabola: the fit itself is tested on synthetic losses above.)"""
    from herd.train.scaling import plan_isoflop_grid, pretrain_train_fn, run_isoflop_grid

    from .helpers import tiny_config

    base = ModelArgs.from_name("tiny-nope")
    family = [base.replace(n_layers=n, dim=d, n_heads=d // 8, n_kv_heads=d // 8)
              for n, d in [(1, 8), (1, 16), (1, 32), (2, 32), (2, 48), (3, 64)]]
    plan = plan_isoflop_grid([2e8], base, points_per_budget=3, tokens_per_param=0.05, spread=3,
                             family=family)
    cfg = tiny_config(tmp_path / "unused", data={"seq_len": 32}, train={"global_batch_rows": 16},
                      checkpoint={"keep_last": 1})
    results = tmp_path / "grid.jsonl"
    runs = run_isoflop_grid(plan, pretrain_train_fn(cfg, tmp_path / "grid"), results)
    assert len(runs) == len(plan) == 3
    for point in plan:
        run_cfg = json.loads((tmp_path / "grid" / point.name / "config.json").read_text())
        assert run_cfg["model"]["overrides"]["dim"] == point.args.dim
        assert run_cfg["train"]["steps"] == math.ceil(point.tokens / (16 * 32))
        records = [json.loads(line) for line in (tmp_path / "grid" / point.name / "metrics.jsonl").open()]
        steps = [r for r in records if "step" in r]
        assert len(steps) == run_cfg["train"]["steps"]
        run = next(r for r in runs if r.params == point.params and r.compute_flops == point.compute_flops)
        assert run.loss < steps[0]["loss"]  # it trained: the returned loss is below the first step's

    def never(point):
        raise AssertionError(f"{point.name} was trained again")

    assert run_isoflop_grid(plan, never, results) == runs  # resumed from the results file
