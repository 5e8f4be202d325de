"""Export the bundled base model from its training run, with a model card.

    python scripts/export_base_model.py --run runs/base-kjv --heldout runs/base-kjv-data/shards/heldout \
        --last 5 --out src/herd/bundled/base

Averages the run's last K checkpoints (herd.train.averaging), measures the held-out loss of
the last checkpoint and of the average (fp32, and the average again after the cast to
bf16), keeps whichever of last/average is better, saves it in bf16 in the native layout
with the run's tokenizer, and writes README.md: recipe, tokens seen, held-out losses,
greedy and sampled continuations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch

from herd.checkpoint import load_pretrained, save_pretrained
from herd.generation import Generator, SamplingParams
from herd.tokenizer import Tokenizer
from herd.train.averaging import average_run_checkpoints, run_config
from herd.train.heldout import heldout_loss
from herd.train.metrics import read_metrics

PROMPTS = ["In the beginning", "And Jesus said unto them,", "The LORD is my shepherd;", "Blessed are the"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True)
    p.add_argument("--last", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    opts = p.parse_args()

    cfg = run_config(opts.run)
    seq_len = cfg.data.seq_len
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    last, steps_last = average_run_checkpoints(opts.run, last=1)
    averaged, steps = average_run_checkpoints(opts.run, last=opts.last)
    losses = {f"last checkpoint (step {steps_last[0]})": heldout_loss(last, [opts.heldout], seq_len=seq_len),
              f"average of steps {steps}": heldout_loss(averaged, [opts.heldout], seq_len=seq_len)}
    for name, r in losses.items():
        print(f"held-out loss, {name}: {r.loss:.4f} (ppl {r.perplexity:.2f}, {r.tokens} tokens)")
    best_name = min(losses, key=lambda k: losses[k].loss)
    best = averaged if best_name.startswith("average") else last

    save_pretrained(best, opts.out, tokenizer=tokenizer, dtype=torch.bfloat16)
    shipped = load_pretrained(opts.out, dtype=torch.float32)
    shipped_loss = heldout_loss(shipped, [opts.heldout], seq_len=seq_len)
    print(f"held-out loss, shipped bf16 weights: {shipped_loss.loss:.4f}")

    records = {r["step"]: r for r in read_metrics(opts.run / "metrics.jsonl") if "step" in r}
    final = records[max(steps + steps_last)]  # the newest checkpoint used
    stages = [(opts.run, cfg, final)]  # this run, then the runs it continued from (model.init_from)
    while (parent := stages[-1][1].model.init_from) and (Path(parent).parent / "config.json").is_file():
        run = Path(parent).parent
        done = [r for r in read_metrics(run / "metrics.jsonl") if "step" in r]
        stages.append((run, run_config(run), done[-1]))
    stages.reverse()
    total_tokens = sum(record["tokens"] for _, _, record in stages)
    gen = Generator(shipped, tokenizer)
    samples = []
    for i, prompt in enumerate(PROMPTS):
        params = SamplingParams(max_new_tokens=60, temperature=0.0 if i % 2 == 0 else 0.8, top_p=0.95, seed=i)
        out = gen.generate([tokenizer.encode(prompt, bos=True)], params)[0]
        samples.append((prompt, params.temperature, out.text))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    a = shipped.args
    card = f"""# herd-base-kjv-7m

The base model herd ships: `herd generate` uses it when no `--model` is given. A
{shipped.num_params() / 1e6:.2f}M-parameter Llama 3 architecture model (dim {a.dim}, {a.n_layers} layers,
{a.n_heads} heads / {a.n_kv_heads} KV heads, SwiGLU {a.ffn_dim}, tied embeddings, RoPE theta
{a.rope_theta:g}, context {a.max_seq_len}), stored in bf16 in the Hugging Face layout (transformers'
`LlamaForCausalLM` loads it), with its own byte-level BPE vocabulary of 4,096 ranks + Llama 3's
256 special tokens (`herd tokenizer train`; 4.10 characters per token on held-out KJV text,
Llama 3's 128K vocabulary 4.14).

It writes King James Version English, and nothing else.

## Data
The King James Version of the Bible (1611; public domain), from Debian's `bible-kjv-text`
package (`corpora/kjv/make_corpus.sh`): 1,189 chapters, one document each, verse numbers
dropped; every 40th chapter (30, {losses[best_name].tokens:,} tokens) held out.

## Training
`herd pretrain configs/base-kjv.toml` on 2 CPU cores: document-masked packed rows of {seq_len} tokens,
AdamW, warmup-stable-decay schedules, in {len(stages)} stage(s), each continuing from the last one's
exported weights (`model.init_from`); {total_tokens:,} tokens seen in all (about
{total_tokens / 991_910:.2f} passes over the 991,910 training tokens):
""" + "\n".join(
        f"- `{run}`: {rec['step']} steps, {rec['tokens']:,} tokens, lr {c.optim.lr:g}, "
        f"{c.schedule.warmup_steps} warmup steps, the last {c.schedule.decay_fraction:.0%} decaying to 0; "
        f"training loss at the end {rec['loss']:.3f}" for run, c, rec in stages) + f"""

Then the last {opts.last} checkpoints of the final stage were averaged (`herd.train.averaging`) and
the better of {{last, average}} on held-out loss was kept: {best_name}.
Reproduce everything (corpus to this directory): `bash scripts/train_base_model.sh`.

## Held-out loss (nats per token, {seq_len}-token windows)
""" + "\n".join(f"- {k}: {v.loss:.4f} (perplexity {v.perplexity:.2f})" for k, v in losses.items()) + f"""
- shipped (bf16): {shipped_loss.loss:.4f} (perplexity {shipped_loss.perplexity:.2f})

## Samples (`herd generate --prompt ...`)
""" + "\n".join(f"- temperature {t:g}: **{prompt}**{text.rstrip()}".replace("\n", " / ")
                for prompt, t, text in samples) + f"""

Built at herd commit {commit or 'unknown'}.
"""
    (opts.out / "README.md").write_text(card)
    (opts.out / "training.json").write_text(json.dumps({
        "stages": [{"run": str(run), "steps": rec["step"], "tokens": rec["tokens"], "train_loss": rec["loss"]}
                   for run, _, rec in stages],
        "tokens_seen": total_tokens, "final_train_loss": final["loss"],
        "heldout": {k: v.as_dict() for k, v in losses.items()}, "shipped_heldout": shipped_loss.as_dict(),
        "kept": best_name, "seq_len": seq_len}, indent=1))
    print(card)


if __name__ == "__main__":
    main()
