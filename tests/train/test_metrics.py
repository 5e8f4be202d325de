from __future__ import annotations

import json

import pytest
import torch

from herd.train.metrics import MetricsLog, mfu, peak_flops, read_metrics
from herd.train.plot import plot_run


def test_peak_flops_lookup_and_override(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops("cuda:0", torch.bfloat16) == 989e12
    assert peak_flops("cuda:0", torch.float32) == 989e12 / 2
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert peak_flops("cuda", torch.bfloat16) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert peak_flops("cuda", torch.bfloat16) == 312e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_flops("cuda", torch.bfloat16) == 756e12
    assert peak_flops("cpu", override=5e11) == 5e11
    assert peak_flops("cpu") > 0


def test_mfu_formula():
    # 1,000 tok/s x 6e9 FLOPs/token on 2 devices of 1e13 FLOP/s = 30 %
    assert mfu(1000, 6e9, 1e13, world_size=2) == pytest.approx(0.3)


def test_flops_per_token_counts_the_output_head_whether_tied_or_not():
    from herd.model import ModelArgs

    untied = ModelArgs.from_name("llama3.1-8b")
    tied = ModelArgs.from_name("llama3.2-1b")
    for args in (untied, tied):
        twin = args.replace(tie_word_embeddings=not args.tie_word_embeddings)
        # the head is the same matmul either way: tying only shares its weight with the lookup
        assert args.flops_per_token(2048) == twin.flops_per_token(2048)
    # 8B (untied): 6 x (every parameter but the embedding table) + attention
    a = untied
    attention = 12 * a.n_layers * a.n_heads * a.head_dim * 2048
    assert a.flops_per_token(2048) == 6 * (a.num_params() - a.vocab_size * a.dim) + attention
    # 1B (tied): the one table is both the lookup and the head, so all its parameters count
    b = tied
    assert b.flops_per_token(2048) == 6 * b.num_params() + 12 * b.n_layers * b.n_heads * b.head_dim * 2048


def test_metrics_log_truncates_steps_after_a_resume_point(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(1, 6):
        log.write({"step": step, "loss": float(step), "lr": 1e-3})
    log.close()
    with (tmp_path / "m.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a line cut short by kill -9
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path / "m.jsonl")] == [1, 2, 3]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    with (tmp_path / "metrics.jsonl").open("w") as f:
        for step in range(1, 30):
            f.write(json.dumps({"step": step, "loss": 5 / step, "lr": 1e-3 * min(1, step / 5)}) + "\n")
        f.write(json.dumps({"step": 30, "loss": float("nan"), "lr": 1e-3, "fault": "nan"}) + "\n")
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "nowhere")


def test_run_writes_metrics_with_a_live_display_and_herd_plot_draws_them(tmp_path):
    from typer.testing import CliRunner

    from herd.cli import app
    from herd.train.loop import pretrain

    from .helpers import tiny_config

    pretrain(tiny_config(tmp_path / "run", train={"steps": 3}, metrics={"progress": "on", "peak_flops": 1e12}))
    from herd.model import ModelArgs

    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    flops_per_token = ModelArgs.from_name("tiny-nope").flops_per_token(32)
    for r in records:
        assert {"loss", "grad_norm", "lr", "tokens", "tokens_per_s", "mfu"} <= set(r)
        assert r["tokens"] == r["step"] * 4 * 32
        # MFU = tokens/s x FLOPs per token / the peak given in the config
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token / 1e12)
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run/curves.png").exists()
