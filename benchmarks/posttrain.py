"""SFT and DPO step throughput: herd's objectives in herd's trainer step against TRL's trainers.

Both sides train the same model (herd's initial weights loaded into transformers'
LlamaForCausalLM), on the same dialogs / preference pairs tokenized once by herd (Llama 3
chat format, herd's loss masks), in the same dtype and thread count, with the same
optimizer (torch AdamW, fused) and gradient clipping (1.0).

- SFT: herd packs the step's dialogs into rows with document masking (``CausalLM``,
  chunked linear cross-entropy); TRL's ``SFTTrainer.training_step`` gets the same dialogs
  right-padded with ``labels`` masked the same way (its default, no packing: padding-free
  packing needs flash-attention, which CPUs lack). Figure: dialog tokens per second.
- DPO: reference log-probs precomputed on both sides (``precompute_ref_log_probs``);
  herd's ``DPO`` objective (chosen and rejected in one forward, only content positions
  through the LM head) against ``DPOTrainer.training_step`` (chosen and rejected in one
  forward, TRL's fused LM-head log-probs). NLL term off on both (TRL: loss_type sigmoid).
  Figure: pairs per second.

A step is forward + backward + clip + AdamW step; best of ``--repeats`` runs of
``--steps`` steps, the two alternating so machine drift hits both alike. Loaded shared
machines make single numbers noisy: compare ratios from one run.

    python benchmarks/posttrain.py                       # 2 x 128 model, 128K vocab, CPU fp32, 2 threads
    python benchmarks/posttrain.py --dim 256 --layers 4 --dialogs 8 --pairs 4   # bigger
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TARGET = 1.0
SMALL = {"dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 64, "ffn_dim_multiplier": None}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dialogs", type=int, default=4, help="SFT dialogs per step")
    p.add_argument("--pairs", type=int, default=2, help="DPO pairs per step")
    p.add_argument("--dim", type=int, default=SMALL["dim"])
    p.add_argument("--layers", type=int, default=SMALL["n_layers"])
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def make_data(tok, n_dialogs: int, n_pairs: int, seed: int):
    from herd.posttrain.chat_data import encode_response, encode_sft
    from herd.tokenizer import ChatFormat, Message

    rng = np.random.default_rng(seed)
    words = "the a cat dog runs sleeps over under quickly blue red green house river tree stone light".split()

    def sentence(n):
        return " ".join(rng.choice(words, n)).capitalize() + "."

    fmt = ChatFormat(tok)
    dialogs = [encode_sft(fmt, [Message("system", "Be helpful."), Message("user", sentence(int(rng.integers(8, 30)))),
                                Message("assistant", sentence(int(rng.integers(20, 120))))]) for _ in range(n_dialogs)]
    pairs = []
    for _ in range(n_pairs):
        prompt = fmt.encode_dialog_prompt([Message("user", sentence(int(rng.integers(8, 30))))],
                                          add_generation_prompt=False)
        c = encode_response(fmt, prompt, [Message("assistant", sentence(int(rng.integers(20, 100))))])
        r = encode_response(fmt, prompt, [Message("assistant", sentence(int(rng.integers(20, 100))))])
        pairs.append((c, r))
    return dialogs, pairs


def herd_sft_batch(dialogs):
    """The dialogs packed (longest first, into the emptier row) into 2 rows, document-masked."""
    from herd.train.loader import Batch

    total = sum(len(ids) for ids, _ in dialogs)
    rows = 2
    width = -(-total // rows)
    tokens = np.zeros((rows, width + 1), dtype=np.int64)
    doc = np.full((rows, width + 1), -1, dtype=np.int64)
    pos = np.zeros((rows, width + 1), dtype=np.int64)
    mask = np.zeros((rows, width + 1), dtype=bool)
    fill = [0] * rows
    for i, (ids, m) in enumerate(sorted(dialogs, key=lambda d: -len(d[0]))):
        r = int(np.argmin(fill))
        s = fill[r]
        n = min(len(ids), width + 1 - s)
        tokens[r, s:s + n], doc[r, s:s + n], pos[r, s:s + n] = ids[:n], i, np.arange(n)
        mask[r, s:s + n] = np.asarray(m[:n]) != 0
        fill[r] += n
    labels = tokens[:, 1:].copy()
    labels[(doc[:, 1:] != doc[:, :-1]) | ~mask[:, 1:]] = -100
    doc[doc < 0] = 10_000  # padding: its own document
    t = torch.from_numpy
    return Batch(t(tokens[:, :-1]).contiguous(), t(labels), t(doc[:, :-1]).contiguous(), t(pos[:, :-1]).contiguous(),
                 int((labels != -100).sum()))


def hf_sft_inputs(dialogs):
    width = max(len(ids) for ids, _ in dialogs)
    ids = torch.zeros(len(dialogs), width, dtype=torch.long)
    labels = torch.full((len(dialogs), width), -100, dtype=torch.long)
    attention = torch.zeros(len(dialogs), width, dtype=torch.long)
    for i, (d, m) in enumerate(dialogs):
        ids[i, :len(d)] = torch.tensor(d)
        attention[i, :len(d)] = 1
        lab = torch.tensor(d)
        lab[torch.tensor(m) == 0] = -100
        labels[i, :len(d)] = lab
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def timed(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import llama_models.llama3 as ll3
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from herd.checkpoint import save_pretrained
    from herd.model import ModelArgs, Transformer
    from herd.posttrain.dpo import DPO, reference_logps
    from herd.posttrain.pairs import Pair, PairBatch
    from herd.tokenizer import Tokenizer
    from herd.train.config import OptimConfig
    from herd.train.objective import CausalLM
    from herd.train.optim import build_optimizer

    tok = Tokenizer.from_file(Path(ll3.__file__).parent / "tokenizer.model")
    dialogs, raw_pairs = make_data(tok, args.dialogs, args.pairs, args.seed)
    pairs = [Pair(c[0], c[1], r[0], r[1]) for c, r in raw_pairs]
    margs = ModelArgs.from_name("tiny", **{**SMALL, "dim": args.dim, "n_layers": args.layers})
    torch.manual_seed(args.seed)
    model = Transformer(margs)
    model.init_weights()
    tmp = Path(tempfile.mkdtemp())
    save_pretrained(model, tmp / "m", tokenizer=tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp / "m")
    if hf_tok.pad_token is None:
        hf_tok.pad_token = "<|finetune_right_pad_id|>"
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                             "chosen": [{"role": "assistant", "content": "yo"}],
                             "rejected": [{"role": "assistant", "content": "no"}],
                             "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    common = {"report_to": [], "use_cpu": True, "bf16": False, "optim": "adamw_torch_fused", "max_grad_norm": 1.0}
    sft_tr = SFTTrainer(model=LlamaForCausalLM.from_pretrained(tmp / "m", dtype=torch.float32),
                        args=SFTConfig(output_dir=str(tmp / "sft"), **common),
                        train_dataset=ds.select_columns(["messages"]), processing_class=hf_tok)
    dpo_tr = DPOTrainer(model=LlamaForCausalLM.from_pretrained(tmp / "m", dtype=torch.float32),
                        args=DPOConfig(output_dir=str(tmp / "dpo"), beta=0.1, loss_type=["sigmoid"],
                                       precompute_ref_log_probs=True, **common),
                        train_dataset=ds.select_columns(["prompt", "chosen", "rejected"]), processing_class=hf_tok)
    for tr in (sft_tr, dpo_tr):
        tr.create_optimizer()
        tr.current_gradient_accumulation_steps = 1  # set by Trainer.train(); we drive training_step directly

    opt_cfg = OptimConfig(lr=1e-4, weight_decay=0.0)
    herd_sft_model, herd_dpo_model = Transformer(margs), Transformer(margs)
    for m in (herd_sft_model, herd_dpo_model):
        m.load_state_dict(model.state_dict())
        m.train()
    sft_opt, dpo_opt = build_optimizer(herd_sft_model, opt_cfg), build_optimizer(herd_dpo_model, opt_cfg)
    sft_batch = herd_sft_batch(dialogs)
    ref = reference_logps(model, pairs)
    pair_batch = PairBatch.from_pairs(pairs, ref)
    sft_obj, dpo_obj = CausalLM(chunk_size=1024, loss_mode="fused"), DPO(beta=0.1, nll_coef=0.0)

    def herd_step(m, opt, obj, batch):
        def step():
            loss, n, _ = obj(m, batch)
            (loss / max(n, 1)).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def trl_step(tr, inputs):
        def step():
            tr.training_step(tr.model, inputs)
            torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0, foreach=True)
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)
        return step

    width = max(pair_batch.chosen.shape[1], pair_batch.rejected.shape[1])
    pad = torch.nn.functional.pad
    dpo_inputs = {
        "input_ids": torch.cat([pad(pair_batch.chosen, (0, width - pair_batch.chosen.shape[1])),
                                pad(pair_batch.rejected, (0, width - pair_batch.rejected.shape[1]))]),
        "completion_mask": torch.cat([pad(pair_batch.chosen_mask, (0, width - pair_batch.chosen.shape[1])),
                                      pad(pair_batch.rejected_mask, (0, width - pair_batch.rejected.shape[1]))]),
        "ref_chosen_logps": ref[0].float(), "ref_rejected_logps": ref[1].float()}
    lengths = torch.cat([pair_batch.chosen_len, pair_batch.rejected_len])
    dpo_inputs["attention_mask"] = (torch.arange(width)[None] < lengths[:, None]).long()
    sft_inputs = hf_sft_inputs(dialogs)

    steps = {"sft/herd": herd_step(herd_sft_model, sft_opt, sft_obj, sft_batch),
             "sft/trl": trl_step(sft_tr, sft_inputs),
             "dpo/herd": herd_step(herd_dpo_model, dpo_opt, dpo_obj, pair_batch),
             "dpo/trl": trl_step(dpo_tr, dpo_inputs)}
    for name, step in steps.items():  # warm-up
        start = time.perf_counter()
        step()
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.repeats):
        for name, step in steps.items():
            best[name] = min(best[name], timed(step, args.steps))
    dialog_tokens = sum(len(ids) for ids, _ in dialogs)
    print(f"model: {margs.num_params() / 1e6:.1f}M parameters ({margs.n_layers} x {margs.dim}, vocab "
          f"{margs.vocab_size}), fp32, "
          f"{args.threads} threads, torch {torch.__version__}; SFT {args.dialogs} dialogs ({dialog_tokens} tokens) "
          f"per step, DPO {args.pairs} pairs per step; AdamW fused + clip 1.0 on both sides")
    for name, seconds in best.items():
        print(f"{name:9s} {seconds * 1000:8.1f} ms/step")
    sft_ratio = best["sft/trl"] / best["sft/herd"]
    dpo_ratio = best["dpo/trl"] / best["dpo/herd"]
    print(f"figure: sft_tokens_per_s_vs_trl = {sft_ratio:.2f} x (target >= {TARGET}) "
          f"{'MET' if sft_ratio >= TARGET else 'MISSED'}")
    print(f"figure: dpo_pairs_per_s_vs_trl = {dpo_ratio:.2f} x (target >= {TARGET}) "
          f"{'MET' if dpo_ratio >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
