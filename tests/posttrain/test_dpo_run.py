"""DPO through the trainer: metrics per step, cached reference, and a preference with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from herd.checkpoint import load_any
from herd.posttrain.config import load_posttrain_config
from herd.posttrain.dpo import REFERENCE_CACHE, preference_accuracy, reference_logps, run_dpo
from herd.posttrain.pairs import load_pairs
from tests.posttrain.conftest import write_jsonl

# 14 training words, then 8 held-out words made of the training words' letters
WORDS = ["cat", "dog", "sun", "tree", "blue", "red", "fish", "bird", "moon", "star", "rain", "wind", "sky", "sea",
         "bat", "hen", "log", "net", "ice", "arm", "fog", "owl"]


def case_prefs(n: int, seed: int, words: list[str] = WORDS) -> list[dict]:
    """'echo: WORD' -> prefer the reply in upper case over the same reply in lower case."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = words[rng.integers(len(words))]
        out.append({"prompt": [{"role": "user", "content": f"echo: {w}"}],
                    "chosen": [{"role": "assistant", "content": w.upper()}],
                    "rejected": [{"role": "assistant", "content": w}]})
    return out


def dpo_config(tmp_path, base, data, *extra):
    return load_posttrain_config("dpo", "configs/dpo-tiny.toml", [
        f"base.model={str(base)!r}", f"dpo.data={str(data)!r}", f"run_dir={str(tmp_path / 'run')!r}",
        "metrics.progress='off'", "train.threads=1", "data.seq_len=64", *extra])


def test_dpo_run_metrics_reference_cache_and_held_out_accuracy(byte_tok, tiny_base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", case_prefs(48, 0, WORDS[:14]))
    held = write_jsonl(tmp_path / "held.jsonl", case_prefs(16, 1, WORDS[14:]))  # unseen words
    result = run_dpo(dpo_config(tmp_path, tiny_base, train, "train.steps=25"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 26))
    for key in ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected", "dpo_loss", "nll"):
        assert all(key in r for r in records), key
    assert records[0]["reward_accuracy"] == 0.0 and records[0]["reward_margin"] == 0.0  # policy == reference
    assert records[-1]["reward_accuracy"] == 1.0 and records[-1]["reward_margin"] > 0.1
    assert (tmp_path / "run" / REFERENCE_CACHE).exists()
    # held-out preference accuracy of the implicit reward, on words never seen in training
    pairs = load_pairs(held, byte_tok)
    reference = reference_logps(load_any(tiny_base), pairs)
    assert preference_accuracy(load_any(result.export_dir), pairs, reference) >= 0.9


def sft_dialogs(n: int = 200) -> list[dict]:
    """'echo: w' -> w, half in upper case, half in lower case (training words only)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w = WORDS[rng.integers(14)]
        out.append({"messages": [{"role": "user", "content": f"echo: {w}"},
                                 {"role": "assistant", "content": w.upper() if i % 2 else w}]})
    return out


def replies(model_dir, tok, words: list[str] = WORDS, temperature: float = 1.0) -> list[str]:
    """One sampled reply to 'echo: w' per word."""
    from herd.generation import Generator, SamplingParams
    from herd.tokenizer import ChatFormat, Message

    fmt = ChatFormat(tok)
    gen = Generator(load_any(model_dir), tok, cpu_gemv=False)
    prompts = [fmt.encode_dialog_prompt([Message("user", f"echo: {w}")]) for w in words]
    outs = gen.generate(prompts, SamplingParams(temperature=temperature, top_p=1.0, seed=0, max_new_tokens=8))
    return [o.text for o in outs]


def upper_rate(model_dir, tok) -> float:
    """Share of sampled replies (temperature 1, one per word, all 22 words) that are upper-case words."""
    texts = replies(model_dir, tok)
    return float(np.mean([t.strip() != "" and t == t.upper() and t.strip().isalpha() for t in texts]))


@pytest.mark.slow
def test_sft_then_dpo_generated_replies_follow_the_preference(byte_tok, tiny_base, tmp_path):
    """SFT teaches 'echo: w' -> w in either case; DPO must make the replies upper case (> 0.9)."""
    from herd.posttrain.sft import run_sft

    sft_cfg = load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(write_jsonl(tmp_path / 'sft.jsonl', sft_dialogs()))!r}]",
        f"run_dir={str(tmp_path / 'sft')!r}", "train.steps=150", "metrics.progress='off'", "data.seq_len=128",
        "train.threads=1", "optim.lr=3e-3"])
    sft_model = run_sft(sft_cfg).export_dir
    before = upper_rate(sft_model, byte_tok)
    train = write_jsonl(tmp_path / "train.jsonl", case_prefs(64, 0, WORDS[:14]))
    dpo_model = run_dpo(dpo_config(tmp_path, sft_model, train, "train.steps=40")).export_dir
    after = upper_rate(dpo_model, byte_tok)
    print(f"upper-case reply rate: before DPO {before:.2f}, after {after:.2f}")
    assert before < 0.7 and after > 0.9, (before, after)
