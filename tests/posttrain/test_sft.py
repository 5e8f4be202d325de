"""SFT: loss masks token by token (against llama-models' chat format), packing, the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from herd.posttrain.chat_data import ChatDataError, dialog_from_record, encode_sft, load_sft_dialogs
from herd.posttrain.config import load_posttrain_config
from herd.posttrain.sft import dialog_loss, run_sft, write_sft_shard
from herd.tokenizer import ChatFormat
from herd.train.loader import PackedLoader, Source
from herd.train.objective import CausalLM
from tests.conftest import make_tiny_model
from tests.posttrain.conftest import write_jsonl

TOOL_DIALOG = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"call_id": "c1", "tool_name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"role": "ipython", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": "21 degrees."},
        {"role": "user", "content": "And <|eot_id|> tomorrow?"},
        {"role": "assistant", "content": "Unknown."},
    ],
}
PLAIN = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]}


def test_mask_token_by_token_against_llama_models(tok, llama3_tokenizer_path):
    from llama_models.datatypes import RawMessage, StopReason, ToolCall, ToolPromptFormat
    from llama_models.llama3.chat_format import ChatFormat as RefChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as RefTokenizer

    ref = RefChatFormat(RefTokenizer(llama3_tokenizer_path))
    ids, mask = encode_sft(ChatFormat(tok), dialog_from_record(TOOL_DIALOG, "test"))
    # the peer's tokens, message by message; a token is a target iff it comes after an assistant header
    expected_ids, expected_mask = [tok.bos_id], [0]
    for m in TOOL_DIALOG["messages"]:
        calls = [ToolCall(call_id=c["call_id"], tool_name=c["tool_name"], arguments=c["arguments"])
                 for c in m.get("tool_calls", [])]
        stop = StopReason.end_of_message if m.get("stop_reason") == "end_of_message" else StopReason.end_of_turn
        role = "tool" if m["role"] == "ipython" else m["role"]
        piece = ref.encode_message(RawMessage(role=role, content=m["content"], tool_calls=calls, stop_reason=stop),
                                   tool_prompt_format=ToolPromptFormat.json)[0]
        header = piece.index(tok.end_header_id) + 2  # <|start_header_id|> role <|end_header_id|> "\n\n"
        expected_ids += piece
        expected_mask += [0] * header + [int(m["role"] == "assistant")] * (len(piece) - header)
    assert ids == expected_ids + [tok.eos_id]
    assert mask == expected_mask + [0]
    # what is learnt, decoded: exactly the assistant turns with their end tokens
    runs, cur = [], []
    for t, m in zip(ids, mask, strict=True):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    assert runs[0].endswith("<|eom_id|>") and "get_weather" in runs[0] and "Paris" in runs[0]
    assert runs[1:] == ["21 degrees.<|eot_id|>", "Unknown.<|eot_id|>"]
    assert "<|eot_id|>" not in "".join(runs[1:]).replace("<|eot_id|>", "", 2)  # the user's text stays masked


def test_loader_labels_ignore_exactly_the_masked_tokens(tok, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", [TOOL_DIALOG, PLAIN])
    write_sft_shard(data, tok, tmp_path / "shard")
    dialogs = load_sft_dialogs(data, tok)
    total = sum(len(d[0]) for d in dialogs)
    loader = PackedLoader([Source("sft", [tmp_path / "shard"])], total - 1, seed=0)
    batch = loader.next_batch(1)
    tokens, labels = batch.tokens[0].numpy(), batch.labels[0].numpy()
    # rebuild the stream in the loader's document order: find each dialog by its ids
    ids_to_mask = {tuple(ids): mask for ids, mask in dialogs}
    pos = 0
    seen = 0
    while pos < len(tokens):
        doc = next(ids for ids in ids_to_mask if tuple(tokens[pos:pos + len(ids)]) == ids[:len(tokens) - pos])
        mask = ids_to_mask[doc]
        for j in range(len(doc) - 1):
            if pos + j < len(labels):
                want = doc[j + 1] if mask[j + 1] else -100
                assert labels[pos + j] == want, (seen, j)
        if pos + len(doc) - 1 < len(labels):
            assert labels[pos + len(doc) - 1] == -100  # never predict the next dialog's first token
        pos += len(doc)
        seen += 1
    assert seen == 2 and batch.n_targets == int(np.sum(labels != -100)) > 0


def test_packed_batch_loss_equals_per_dialog_loss(tok, tmp_path):
    records = [TOOL_DIALOG, PLAIN, {"messages": [{"role": "user", "content": "2+2?"},
                                                  {"role": "assistant", "content": "4"},
                                                  {"role": "user", "content": "3+3?"},
                                                  {"role": "assistant", "content": "6, of course."}]}]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    write_sft_shard(data, tok, tmp_path / "shard")
    dialogs = load_sft_dialogs(data, tok)
    total = sum(len(d[0]) for d in dialogs)
    model = make_tiny_model("tiny", seed=3)
    loader = PackedLoader([Source("sft", [tmp_path / "shard"])], total - 1, seed=0)
    batch = loader.next_batch(1)
    with torch.no_grad():
        loss_sum, n, _ = CausalLM(chunk_size=64)(model, batch)
    per_dialog = dialog_loss(model, dialogs)
    n_dialog = sum(sum(m[1:]) for _, m in dialogs)
    assert n == n_dialog
    assert float(loss_sum) / n == pytest.approx(per_dialog, rel=1e-5)
    with torch.no_grad():  # and it is not the unmasked loss
        unmasked, _, _ = CausalLM(chunk_size=64, document_masking=False)(model, batch)
    assert float(unmasked) / n != pytest.approx(per_dialog, rel=1e-5)  # attention across dialogs changes it


def test_bad_records_name_the_line(tok, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(ChatDataError, match=r"bad.jsonl:1: .*no assistant"):
        load_sft_dialogs(bad, tok)
    bad.write_text('\n{"messages": [{"role": "robot", "content": "hi"}]}\n')
    with pytest.raises(ChatDataError, match=r"bad.jsonl:2: messages\[0\]"):
        load_sft_dialogs(bad, tok)


def _format_dialogs(n: int, seed: int) -> list[dict]:
    """Instruction: 'tag: WORD' -> the reply '<WORD>' (a format the base model does not know)."""
    rng = np.random.default_rng(seed)
    words = ["cat", "dog", "sun", "tree", "blue", "red", "fish", "bird", "moon", "star", "rain", "wind"]
    out = []
    for _ in range(n):
        w = words[rng.integers(len(words))]
        out.append({"messages": [{"role": "user", "content": f"tag: {w}"},
                                 {"role": "assistant", "content": f"[[{w}]]"}]})
    return out


def test_sft_run_learns_a_held_out_instruction_format(byte_tok, tiny_base, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _format_dialogs(64, 0))
    held = write_jsonl(tmp_path / "held.jsonl", _format_dialogs(16, 1))
    cfg = load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(train)!r}]", f"run_dir={str(tmp_path / 'run')!r}",
        "train.steps=30", "metrics.progress='off'", "data.seq_len=128", "train.threads=1"])
    from herd.checkpoint import load_any

    before = dialog_loss(load_any(tiny_base), load_sft_dialogs(held, byte_tok))
    result = run_sft(cfg)
    after = dialog_loss(load_any(result.export_dir), load_sft_dialogs(held, byte_tok))
    assert result.step == 30 and (result.export_dir / "tokenizer.model").exists()
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_sft_follows_the_format_on_held_out_instructions(byte_tok, tiny_base, tmp_path):
    """'tag: xyz' -> '[xyz]' for random 3-letter strings; greedy replies to 20 unseen strings keep the format."""
    from herd.checkpoint import load_any
    from herd.generation import Generator, SamplingParams
    from herd.tokenizer import Message

    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")

    def word() -> str:
        return "".join(rng.choice(letters, 3))

    train = [{"messages": [{"role": "user", "content": f"tag: {w}"}, {"role": "assistant", "content": f"[{w}]"}]}
             for w in (word() for _ in range(2000))]
    held = [word() for _ in range(20)]
    fmt = ChatFormat(byte_tok)
    prompts = [fmt.encode_dialog_prompt([Message("user", f"tag: {w}")]) for w in held]

    def format_rate(model_dir) -> float:
        outs = Generator(load_any(model_dir), byte_tok, cpu_gemv=False).generate(
            prompts, SamplingParams(temperature=0, max_new_tokens=8))
        return float(np.mean([len(o.text) == 5 and o.text[0] == "[" and o.text[-1] == "]" and o.text[1:4].isalpha()
                              for o in outs]))

    cfg = load_posttrain_config("sft", "configs/sft-tiny.toml", [
        f"base.model={str(tiny_base)!r}", f"sft.data=[{str(write_jsonl(tmp_path / 'train.jsonl', train))!r}]",
        f"run_dir={str(tmp_path / 'run')!r}", "train.steps=150", "metrics.progress='off'", "data.seq_len=256",
        "train.threads=1", "train.global_batch_rows=8", "train.micro_batch_rows=8"])
    before, after = format_rate(tiny_base), format_rate(run_sft(cfg).export_dir)
    print(f"held-out format rate: before SFT {before:.2f}, after {after:.2f}")
    assert before == 0.0 and after >= 0.9
