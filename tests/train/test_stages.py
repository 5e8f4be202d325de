"""Continued stages (init_from, long context), checkpoint averaging, held-out loss, strict metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from herd.checkpoint import load_pretrained
from herd.data.shards import write_shard
from herd.model import ModelArgs, Transformer
from herd.train.averaging import average_run_checkpoints, average_state_dicts
from herd.train.checkpointing import Checkpointer, step_dir_name
from herd.train.config import ConfigError
from herd.train.heldout import heldout_loss
from herd.train.loop import pretrain
from herd.train.memory import estimate_for_config, estimate_memory
from herd.train.metrics import MetricsLog, read_metrics

from .helpers import tiny_config


def test_init_from_continues_from_the_exported_weights_with_new_rope_settings(tmp_path):
    first = pretrain(tiny_config(tmp_path / "a", train={"steps": 3}, checkpoint={"export": True}))
    long_ctx = {"preset": "tiny-nope", "init_from": str(first.export_dir),
                "overrides": {"max_seq_len": 2048, "rope_theta": 1e6,
                              "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 64}}}
    # steps=0 would be invalid: one step at lr ~0 shows the start point is the exported model
    second = pretrain(tiny_config(tmp_path / "b", model=long_ctx, data={"seq_len": 64}, train={"steps": 1},
                                  optim={"lr": 1e-12}, checkpoint={"export": True}))
    before, after = load_pretrained(first.export_dir), load_pretrained(second.export_dir)
    for (name, x), (_, y) in zip(before.state_dict().items(), after.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    assert after.args.rope_scaling.factor == 4.0 and after.args.max_seq_len == 2048
    assert after.args.rope_theta == 1e6 and before.args.rope_theta == 500000.0


def test_init_from_with_other_shapes_is_a_config_error(tmp_path):
    first = pretrain(tiny_config(tmp_path / "a", train={"steps": 1}, checkpoint={"export": True}))
    cfg = tiny_config(tmp_path / "b", model={"preset": "tiny-nope", "init_from": str(first.export_dir),
                                             "overrides": {"dim": 96}})
    with pytest.raises(ConfigError, match="dim is 48, the run's model has 96"):
        pretrain(cfg)


def test_average_of_the_last_checkpoints(tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_config(run, train={"steps": 6}, checkpoint={"every": 2, "keep_last": 3}))
    assert Checkpointer(run / "checkpoints").steps() == [2, 4, 6]
    args = ModelArgs.from_name("tiny-nope")
    states = []
    for step in (4, 6):
        m = Transformer(args)
        Checkpointer(run / "checkpoints").load(run / "checkpoints" / step_dir_name(step), m, None, rng=False)
        states.append(m.state_dict())
    averaged, steps = average_run_checkpoints(run, last=2)
    assert steps == [4, 6]
    for name, value in averaged.state_dict().items():
        torch.testing.assert_close(value, (states[0][name] + states[1][name]) / 2, rtol=0, atol=1e-7, msg=name)
    assert not torch.equal(states[0]["model.norm.weight"], states[1]["model.norm.weight"])  # a real average

    weighted = average_state_dicts(states, weights=[3.0, 1.0])
    torch.testing.assert_close(weighted["model.norm.weight"],
                               0.75 * states[0]["model.norm.weight"] + 0.25 * states[1]["model.norm.weight"])
    with pytest.raises(FileNotFoundError, match="no checkpoint for step"):
        average_run_checkpoints(run, steps=[5])

    from typer.testing import CliRunner

    from herd.cli import app

    done = CliRunner().invoke(app, ["average", "--run", str(run), "--last", "2", "--out", str(tmp_path / "avg")])
    assert done.exit_code == 0, done.output
    saved = load_pretrained(tmp_path / "avg")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(value, averaged.state_dict()[name], rtol=0, atol=0, msg=name)


def test_average_refuses_a_corrupt_checkpoint(tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_config(run, train={"steps": 4}, checkpoint={"every": 2}))
    data = next(p for p in (run / "checkpoints" / "step-000004").iterdir() if p.suffix == ".distcp")
    data.write_bytes(data.read_bytes()[:-16])
    with pytest.raises(Exception, match="step-000004"):
        average_run_checkpoints(run, last=2)


def test_heldout_loss_equals_per_document_cross_entropy(tmp_path):
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny-nope")
    model = Transformer(args)
    model.init_weights(0.02, torch.Generator().manual_seed(1))
    docs = [torch.randint(2, 1000, (n,)) for n in (5, 37, 64, 90)]
    prefix = tmp_path / "heldout" / "h-00000"
    prefix.parent.mkdir()
    write_shard(prefix, [d.tolist() for d in docs], tokenizer_hash="test", vocab_size=args.vocab_size, bos_id=0,
                eos_id=1)
    got = heldout_loss(model, [tmp_path / "heldout"], seq_len=32, batch_rows=3)

    # the same by hand: each document in windows of 32 targets, positions continuing
    total, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            for start in range(0, len(d) - 1, 32):
                piece = d[start:start + 33]
                logits = model(piece[None, :-1], torch.arange(start, start + len(piece) - 1)[None])
                total += F.cross_entropy(logits[0].float(), piece[1:], reduction="sum").item()
                count += len(piece) - 1
    assert got.tokens == count == sum(len(d) - 1 for d in docs)
    assert got.documents == 4
    assert math.isclose(got.loss, total / count, rel_tol=1e-5)
    assert heldout_loss(model, [tmp_path / "heldout"], seq_len=32, max_tokens=10).tokens == 10


def test_metrics_write_nan_as_null(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": 0.1})
    log.close()
    line = (tmp_path / "m.jsonl").read_text()
    record = json.loads(line)  # strict JSON parsers read it
    assert "NaN" not in line and "Infinity" not in line
    assert record == {"step": 1, "loss": None, "grad_norm": None, "lr": 0.1, "nonfinite": ["loss", "grad_norm"]}
    assert read_metrics(tmp_path / "m.jsonl")[0]["loss"] is None


def test_memory_for_a_config_is_the_estimate_of_its_settings(tmp_path):
    cfg = tiny_config(tmp_path, data={"seq_len": 64}, train={"micro_batch_rows": 2, "activation_checkpointing": True})
    est = estimate_for_config(cfg, world_size=2, device="cuda")
    want = estimate_memory(ModelArgs.from_name("tiny-nope"), seq_len=64, micro_batch_rows=2, dp=2,
                           param_dtype="bfloat16", activation_checkpointing=True, chunked_ce_chunk=1024)
    assert est.to_dict() == want.to_dict()
    cpu = estimate_for_config(cfg, device="cpu")
    assert cpu.to_dict() == estimate_memory(ModelArgs.from_name("tiny-nope"), seq_len=64, micro_batch_rows=2,
                                            param_dtype="float32", activation_checkpointing=True,
                                            chunked_ce_chunk=1024, attention="dense_mask").to_dict()
