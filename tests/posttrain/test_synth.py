"""`herd synth`: the sandbox (tests pass/fail, timeouts, no network, rlimits), the filters on crafted
responses, and a whole run through the engine with a tiny random model and a real reward model."""

from __future__ import annotations

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from herd.cli import app
from herd.posttrain.chat_data import load_sft_dialogs
from herd.posttrain.reward import add_score_head, save_reward_model
from herd.posttrain.sandbox import SandboxLimits, run_python
from herd.posttrain.synth import load_synth_config, run_synth
from herd.posttrain.synth_filters import Candidate, FilterConfig, extract_code, filter_candidates
from herd.train import ConfigError
from tests.posttrain.conftest import make_byte_model, write_jsonl

SQUARE = "```python\ndef square(x):\n    return x * x\n```"
TESTS = "assert square(3) == 9\nassert square(-2) == 4"
FAST = SandboxLimits(timeout_s=2, cpu_s=2, memory_mb=512)


def test_sandbox_passing_and_failing_tests():
    ok = run_python(extract_code(SQUARE) + "\n" + TESTS, FAST)
    assert ok.passed and ok.returncode == 0 and not ok.timed_out
    bad = run_python("def square(x):\n    return x + x\n" + TESTS, FAST)
    assert not bad.passed and bad.returncode == 1 and "AssertionError" in bad.stderr


def test_sandbox_kills_an_infinite_loop_at_the_timeout():
    start = time.monotonic()
    res = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1, cpu_s=30))
    assert res.timed_out and not res.passed and res.returncode is None
    assert time.monotonic() - start < 10


def test_sandbox_has_no_network_and_limits_memory_and_environment(monkeypatch):
    monkeypatch.setenv("HERD_SECRET_FOR_TEST", "leak")
    net = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)\nprint('connected')", FAST)
    assert not net.passed and "connected" not in net.stdout
    assert "network access is disabled" in net.stderr or "unreachable" in net.stderr.lower()
    dns = run_python("import socket\nprint(socket.getaddrinfo('pypi.org', 443))", FAST)
    assert not dns.passed
    mem = run_python("x = bytearray(2 * 1024 ** 3)\nprint('allocated')", FAST)
    assert not mem.passed and "MemoryError" in mem.stderr
    cpu = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=30, cpu_s=1))
    assert not cpu.passed and not cpu.timed_out and cpu.returncode < 0  # SIGXCPU / SIGKILL from RLIMIT_CPU
    big = run_python("open('f', 'wb').write(b'x' * (3 * 1024 * 1024))", SandboxLimits(file_size_mb=1))
    assert not big.passed and ("File too large" in big.stderr or big.returncode < 0)
    env = run_python("import os, pathlib\nprint(os.environ.get('HERD_SECRET_FOR_TEST'), pathlib.Path.cwd())", FAST)
    assert env.passed and env.stdout.startswith("None ") and "herd-sandbox-" in env.stdout


def test_without_a_network_namespace_the_audit_hook_still_refuses_sockets(monkeypatch):
    import herd.posttrain.sandbox as sandbox

    monkeypatch.setattr(sandbox, "network_namespace_available", lambda: False)
    res = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", FAST)
    assert res.isolation == "audit-hook" and not res.passed and "network access is disabled" in res.stderr


def _c(response: str, instruction: str = "do it", **kw) -> Candidate:
    return Candidate(seed_id=kw.pop("seed_id", "s"), instruction=instruction, response=response, **kw)


def test_filters_count_drops_in_order_on_crafted_responses():
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
    long_text = " ".join(f"{a} {b}" for a in words for b in words[:4])  # 128 words, distinct 5-grams
    candidates = [
        _c(""),                                                      # length: empty
        _c("x" * 50, finish_reason="length"),                        # length: truncated
        _c("A fine answer."), _c("a  FINE answer!"),                  # exact duplicate (normalised)
        _c(long_text), _c(long_text + " extra"),                     # near duplicate
        _c("def f(:\n  pass", kind="code"),                          # code does not parse
        _c(SQUARE, instruction="square it", kind="code", tests=TESTS),  # parses, tests pass
        _c("```python\ndef square(x):\n    return x + 1\n```", instruction="square again", kind="code",
           tests=TESTS),                                             # parses, tests fail
        _c("```python\nwhile True: pass\n```", instruction="loop", kind="code", tests=TESTS),  # timeout
        _c("Low reward answer here."),
    ]
    cfg = FilterConfig(min_chars=1, max_chars=1000, drop_truncated=True, near_dedup=0.8, min_reward=0.0,
                       sandbox=SandboxLimits(timeout_s=1, cpu_s=5, memory_mb=512))
    kept, dropped = filter_candidates(candidates, cfg, score=lambda c: -1.0 if "Low" in c.response else 1.0)
    assert dropped == {"length": 2, "exact_dedup": 1, "near_dedup": 1, "code_parse": 1, "unit_tests": 2,
                       "reward": 1}
    assert [c.response for c in kept] == ["A fine answer.", long_text, SQUARE]
    assert kept[2].sandbox["passed"] and kept[0].score == 1.0
    with pytest.raises(ValueError, match="reward model"):
        filter_candidates([_c("ok")], FilterConfig(min_reward=0.0))


@pytest.fixture
def reward_dir(tmp_path, byte_tok):
    rm = add_score_head(make_byte_model(seed=8), seed=1)
    with torch.no_grad():
        rm.score.weight.mul_(50)
    return save_reward_model(rm, tmp_path / "rm", tokenizer=byte_tok)


def test_synth_run_through_the_engine_writes_sft_data_and_a_report(tmp_path, tiny_base, byte_tok, reward_dir):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"prompt": "Write a question.", "id": "q"},
        {"instruction": "Write square(x).", "kind": "code", "tests": TESTS, "id": "code"},
    ])
    common = [f"synth.model={str(tiny_base)!r}", f"synth.seeds={str(seeds)!r}",
              f"synth.reward_model={str(reward_dir)!r}", "synth.samples=3", "synth.max_new_tokens=12",
              "synth.max_instruction_tokens=12", "synth.filters.min_reward=-1e9", "synth.filters.near_dedup=0.0"]
    cfg = load_synth_config("configs/synth-tiny.toml", [*common, f"synth.out={str(tmp_path / 'a.jsonl')!r}"])
    cfg.seed_records = [{"instruction": "Say hi.", "system": "Be brief.", "id": "hi"}]
    report = run_synth(cfg)
    # 3 seeds x 3 samples; the random model's code neither parses reliably nor passes: what is kept is counted
    assert report["generated"] == 9 and report["kept"] + sum(report["dropped"].values()) == 9
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(records) == report["kept"] == json.loads((tmp_path / "a.report.json").read_text())["kept"]
    assert all(r["seed"] != "code" or r["unit_tests"]["passed"] for r in records)
    assert len(load_sft_dialogs(tmp_path / "a.jsonl", byte_tok)) == len(records)  # valid SFT chat data
    scores = sorted(r["score"] for r in records)
    assert len(set(scores)) > 1
    # the same seeded generation with the threshold at the median drops exactly the lower scores
    median = scores[len(scores) // 2]
    cfg = load_synth_config("configs/synth-tiny.toml", [*common, f"synth.out={str(tmp_path / 'b.jsonl')!r}",
                                                        f"synth.filters.min_reward={median}"])
    cfg.seed_records = [{"instruction": "Say hi.", "system": "Be brief.", "id": "hi"}]
    again = run_synth(cfg)
    assert again["dropped"]["reward"] == sum(s < median for s in scores)
    assert again["kept"] == len(records) - again["dropped"]["reward"]


def test_template_seeds_expand_over_their_vars(tmp_path):
    from herd.posttrain.chat_data import ChatDataError
    from herd.posttrain.synth import load_seeds

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"id": "ex", "prompt": "Write a {lang} exercise about {topic}.",
         "vars": {"lang": ["Python", "C"], "topic": ["lists", "strings", "maps"]}},
        {"instruction": "plain"}])
    cfg = load_synth_config(None, ["synth.model='m'", f"synth.seeds={str(seeds)!r}"])
    got = load_seeds(cfg)
    assert [s["id"] for s in got] == [f"ex-{k}" for k in range(6)] + ["6"]
    assert got[0]["prompt"] == "Write a Python exercise about lists."
    assert got[5]["prompt"] == "Write a C exercise about maps."
    assert all("vars" not in s for s in got)
    cfg.seed_records = [{"prompt": "about {missing}", "vars": {"topic": ["x"]}}]
    with pytest.raises(ChatDataError, match="does not fill"):
        load_seeds(cfg)


def test_synth_config_errors_and_cli(tmp_path, tiny_base):
    with pytest.raises(ConfigError, match="synth.model is empty"):
        load_synth_config(None, ["synth.seeds='x.jsonl'"])
    with pytest.raises(ConfigError, match="min_reward needs synth.reward_model"):
        load_synth_config(None, ["synth.model='m'", "synth.seeds='x'", "synth.filters.min_reward=1.0"])
    with pytest.raises(ConfigError, match="unknown key 'synth.filters.dedup'"):
        load_synth_config(None, ["synth.model='m'", "synth.seeds='x'", "synth.filters.dedup=true"])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": "hi", "prompt": "both"}])
    result = CliRunner().invoke(app, ["synth", "--config", "configs/synth-tiny.toml", f"synth.model={str(tiny_base)!r}",
                                      f"synth.seeds={str(seeds)!r}", f"synth.out={str(tmp_path / 'o.jsonl')!r}"])
    assert result.exit_code != 0 and "exactly one of 'instruction' or 'prompt'" in result.output
    seeds = write_jsonl(tmp_path / "ok.jsonl", [{"instruction": "hi"}])
    result = CliRunner().invoke(app, ["synth", "--config", "configs/synth-tiny.toml", f"synth.model={str(tiny_base)!r}",
                                      f"synth.seeds={str(seeds)!r}", f"synth.out={str(tmp_path / 'o.jsonl')!r}",
                                      "synth.max_new_tokens=4", "synth.max_instruction_tokens=4"])
    assert result.exit_code == 0, result.output
    # configs/synth-tiny.toml: a template [[seed]] over 2 topics and a code seed; the file: 1 seed
    assert '"seeds": 4' in result.output and '"generated": 8' in result.output
    assert (tmp_path / "o.report.json").exists()
