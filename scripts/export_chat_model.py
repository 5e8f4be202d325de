"""Export the bundled chat model from its SFT run, with a model card.

    herd sft --config configs/chat-kjv.toml
    python scripts/export_chat_model.py --run runs/chat-kjv --out src/herd/bundled/chat

Loads the run's exported model, measures the held-out loss on assistant tokens (the
held-out conversations of corpora/chat) for the base model and for the chat model, saves
the chat model in bf16 (HF layout, with its tokenizer) and writes README.md: recipe,
held-out losses, and greedy replies to held-out and other prompts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from herd.checkpoint import load_pretrained, save_pretrained
from herd.generation import Generator, SamplingParams
from herd.posttrain.chat_data import encode_sft, parse_messages, read_jsonl
from herd.tokenizer import ChatFormat, Message, Tokenizer

BASE = Path("src/herd/bundled/base")
HELDOUT = Path("corpora/chat/chatterbot-heldout.jsonl.gz")
EXTRA_PROMPTS = ["Hello", "What is your name?", "Tell me a joke", "Who wrote the Bible?"]


def heldout_loss(model: torch.nn.Module, tok: Tokenizer) -> tuple[float, int]:
    """Mean cross-entropy over the assistant tokens of every held-out conversation (its own row)."""
    fmt = ChatFormat(tok)
    total, count = 0.0, 0
    with torch.no_grad():
        for where, rec in read_jsonl(HELDOUT):
            ids, mask = encode_sft(fmt, parse_messages(rec["messages"], where, "messages"))
            logits = model(torch.tensor([ids])).float()[0, :-1]
            y = torch.tensor(ids[1:])
            keep = torch.tensor(mask[1:]) == 1  # position t predicts token t + 1
            total += float(torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count, count


def replies(model: torch.nn.Module, tok: Tokenizer, prompts: list[str]) -> list[tuple[str, str, str]]:
    gen = Generator(model, tok)
    params = SamplingParams(temperature=0, max_new_tokens=48)
    out = []
    for p in prompts:
        msg = gen.chat([Message("user", p)], params)
        out.append((p, msg.content, getattr(msg.stop_reason, "value", msg.stop_reason)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    opts = ap.parse_args()

    tok = Tokenizer.from_dir(BASE)
    base = load_pretrained(BASE, dtype=torch.float32).eval()
    chat = load_pretrained(opts.run / "final", dtype=torch.float32).eval()
    base_loss, n = heldout_loss(base, tok)
    chat_fp32, _ = heldout_loss(chat, tok)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(chat, Path(tmp) / "m", dtype=torch.bfloat16, tokenizer=tok)
        shipped = load_pretrained(Path(tmp) / "m").eval()
        chat_bf16, _ = heldout_loss(shipped.float(), tok)
        save_pretrained(shipped, opts.out, dtype=torch.bfloat16, tokenizer=tok)

    held_prompts = [rec["messages"][0]["content"] for _, rec in read_jsonl(HELDOUT)][:6]
    samples = replies(shipped, tok, held_prompts + EXTRA_PROMPTS)
    cfg = json.loads((opts.run / "config.json").read_text())
    metrics = [json.loads(line) for line in (opts.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in metrics if "step" in m]
    card = [
        "# herd's bundled chat model",
        "",
        "herd's bundled base model (7M parameters, pre-trained on the King James Version) fine-tuned by",
        "`herd sft --config configs/chat-kjv.toml` on the English conversations of chatterbot-corpus 1.2.0",
        "(BSD-3-Clause; `corpora/chat`, every 20th conversation held out): loss on assistant turns only,",
        "dialogs packed with document masking. It is the default model of `herd chat`.",
        "",
        "What to expect: the Llama 3 chat format, turns that end with <|eot_id|>, small talk in",
        "chatterbot's words — and little else. 538 short conversations on top of 3.7M tokens of",
        "scripture do not make an assistant; this model is here so that `herd chat` runs out of the",
        "box and so that post-training has a real end-to-end product. For a real assistant pass",
        "`--model` a Llama 3.x Instruct checkpoint.",
        "",
        "## Recipe and figures",
        "",
        f"- steps: {len(steps)}, {steps[-1]['tokens'] if steps else 0} tokens (packed rows of "
        f"{cfg['data']['seq_len']}); lr {cfg['optim']['lr']}, cosine schedule",
        f"- held-out loss on assistant tokens ({n} tokens, {HELDOUT.name}): base model {base_loss:.3f}, "
        f"chat model {chat_fp32:.3f} (fp32), {chat_bf16:.3f} as shipped in bf16",
        "",
        "## Greedy replies (the first six prompts are held out)",
        "",
    ]
    for prompt, reply, stop in samples:
        card.append(f"- **{prompt}** → {reply!r} ({stop})")
    (opts.out / "README.md").write_text("\n".join(card) + "\n")
    print("\n".join(card))


if __name__ == "__main__":
    main()
