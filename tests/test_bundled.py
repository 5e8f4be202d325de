"""The bundled base model: it loads in herd and in transformers alike, it learned its corpus,
and `herd generate` uses it when no --model is given."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from herd.bundled import base_model_dir
from herd.checkpoint import load_pretrained
from herd.generation import Generator, SamplingParams
from herd.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
HELDOUT = REPO / "corpora" / "kjv" / "kjv-heldout.jsonl.gz"


@pytest.fixture(scope="module")
def bundled():
    path = base_model_dir()
    return load_pretrained(path, dtype=torch.float32).eval(), Tokenizer.from_dir(path)


def test_bundled_model_is_small_bf16_and_self_describing():
    path = base_model_dir()
    size = sum(p.stat().st_size for p in path.iterdir())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MiB"
    config = json.loads((path / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["vocab_size"] == 4352
    assert (path / "README.md").is_file() and (path / "training.json").is_file()
    tok = Tokenizer.from_dir(path)
    assert tok.n_words == 4352 and tok.bos_id == config["bos_token_id"] == 4096
    assert 5e6 <= load_pretrained(path).num_params() <= 10e6


def test_bundled_logits_equal_transformers(bundled):
    transformers = pytest.importorskip("transformers")
    model, tok = bundled
    hf = transformers.LlamaForCausalLM.from_pretrained(base_model_dir(), torch_dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("And God said, Let there be light: and there was light.", bos=True)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_bundled_model_beats_the_unigram_model_on_held_out_text(bundled):
    """A model that learned nothing but token frequencies scores the unigram entropy; the
    trained model must do far better on chapters it never saw."""
    model, tok = bundled
    with gzip.open(HELDOUT, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f][:6]
    ids = [tok.encode(d, bos=True, eos=True) for d in docs]
    counts = Counter(t for d in ids for t in d[1:])
    n = sum(counts.values())
    unigram = -sum(c / n * math.log(c / n) for c in counts.values())  # optimistic: fitted on the test text
    total, count = 0.0, 0
    with torch.no_grad():
        for d in ids:
            x = torch.tensor(d[:257])
            logits = model(x[None, :-1])[0]
            total += torch.nn.functional.cross_entropy(logits, x[1:], reduction="sum").item()
            count += len(x) - 1
    loss = total / count
    assert loss < 0.7 * unigram, f"held-out loss {loss:.3f} vs unigram entropy {unigram:.3f}"


def test_herd_generate_uses_the_bundled_model(bundled):
    model, tok = bundled
    done = subprocess.run([sys.executable, "-m", "herd.cli", "generate", "--prompt", "In the beginning",
                           "--temperature", "0", "--max-new-tokens", "12", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    want = Generator(load_pretrained(base_model_dir()), tok).generate(
        [tok.encode("In the beginning", bos=True)], SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert out["token_ids"] == want.token_ids and out["text"] == want.text
    assert len(out["token_ids"]) == 12 and out["text"].strip()


CHAT_HELDOUT = REPO / "corpora" / "chat" / "chatterbot-heldout.jsonl.gz"


def _assistant_loss(model, tok) -> float:
    """Mean cross-entropy over the assistant tokens of the held-out conversations."""
    from herd.posttrain.chat_data import encode_sft, parse_messages, read_jsonl
    from herd.tokenizer import ChatFormat

    fmt, total, count = ChatFormat(tok), 0.0, 0
    with torch.no_grad():
        for where, rec in read_jsonl(CHAT_HELDOUT):
            ids, mask = encode_sft(fmt, parse_messages(rec["messages"], where))
            logits = model(torch.tensor([ids])).float()[0, :-1]
            keep = torch.tensor(mask[1:]) == 1
            total += float(torch.nn.functional.cross_entropy(logits[keep], torch.tensor(ids[1:])[keep],
                                                             reduction="sum"))
            count += int(keep.sum())
    return total / count


def test_bundled_chat_model_learned_held_out_conversations_and_ends_its_turns(bundled):
    from herd.bundled import chat_model_dir
    from herd.tokenizer import Message

    base, tok = bundled
    chat = load_pretrained(chat_model_dir(), dtype=torch.float32).eval()
    assert chat.args == base.args and Tokenizer.from_dir(chat_model_dir()).n_words == tok.n_words
    base_loss, chat_loss = _assistant_loss(base, tok), _assistant_loss(chat, tok)
    assert chat_loss < 0.75 * base_loss, (chat_loss, base_loss)
    reply = Generator(chat, tok).chat([Message("user", "Hello")], SamplingParams(temperature=0, max_new_tokens=48))
    assert reply.role == "assistant" and reply.content.strip() and reply.stop_reason == "end_of_turn"


def test_herd_chat_uses_the_bundled_chat_model():
    done = subprocess.run([sys.executable, "-m", "herd.cli", "chat", "--temperature", "0", "--max-new-tokens", "32"],
                          input="Hello\n/exit\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
