"""Supervised fine-tuning: chat JSON Lines -> loss-masked token shards -> the trainer.

    result = run_sft(load_posttrain_config("sft", "configs/sft-tiny.toml"))

Each dialog is encoded by ``herd.posttrain.chat_data.encode_sft`` (targets: assistant
content, tool calls and end tokens) and written as a token shard with the aligned
``mask`` sidecar (``herd.data.shards``). The pre-training ``PackedLoader`` then packs
dialogs into rows with document masking (no attention across dialogs, positions from
each dialog's start) and sets the label of every masked token to -100, so the loss is
the causal-LM cross-entropy over assistant tokens only, normalised by their count over
the whole step. A dialog that runs past the end of a row continues in the next row
(as in pre-training), so choose ``data.seq_len`` at least as long as the dialogs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from herd.data.shards import ShardInfo, write_shard
from herd.posttrain.chat_data import load_sft_dialogs
from herd.posttrain.config import PosttrainConfig
from herd.posttrain.setup import configure, load_tokenizer, make_export, make_prepare, write_report
from herd.tokenizer import Tokenizer
from herd.train import TrainResult, pretrain
from herd.train.config import SourceConfig
from herd.train.loss import IGNORE_INDEX, chunked_cross_entropy


def write_sft_shard(jsonl: str | Path, tokenizer: Tokenizer, prefix: str | Path, *, source: str = "sft") -> ShardInfo:
    """Encode every dialog of ``jsonl`` and write one token shard with its loss-mask sidecar."""
    dialogs = load_sft_dialogs(jsonl, tokenizer)
    if not dialogs:
        raise ValueError(f"{jsonl}: no dialogs")
    digest = hashlib.sha256(Path(jsonl).read_bytes()).hexdigest()
    return write_shard(prefix, [d[0] for d in dialogs], masks=[d[1] for d in dialogs],
                       tokenizer_hash=tokenizer.hash, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                       vocab_size=tokenizer.vocab_size, source=source,
                       provenance={"input": str(jsonl), "sha256": digest, "format": "llama3-chat sft"})


def run_sft(cfg: PosttrainConfig) -> TrainResult:
    """Tokenize ``sft.data`` into masked shards under the run directory, then train."""
    tokenizer, tok_source = load_tokenizer(cfg)
    configure(cfg)
    train = cfg.train
    data_dir = Path(train.run_dir) / "sft-data"
    sources = []
    for i, path in enumerate(cfg.method.data):
        name = f"{i:02d}-{Path(path).stem}"
        write_sft_shard(path, tokenizer, data_dir / name, source=name)
        sources.append(SourceConfig(name=name, paths=[str(data_dir / name)]))
    train.data.kind, train.data.sources, train.data.tokenizer = "shards", sources, tok_source
    result = pretrain(train, prepare_model=make_prepare(cfg), export=make_export(cfg, tokenizer))
    if cfg.method.held_out and result.export_dir is not None:
        from herd.checkpoint import load_any

        held = load_sft_dialogs(cfg.method.held_out, tokenizer)
        write_report(train.run_dir, "held_out", {"data": cfg.method.held_out, "dialogs": len(held),
                                                  "loss": dialog_loss(load_any(result.export_dir), held)})
    return result


@torch.no_grad()
def dialog_loss(model: nn.Module, dialogs: list[tuple[list[int], list[int]]]) -> float:
    """Mean masked cross-entropy per target token over ``dialogs`` (each alone, no packing)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for ids, mask in dialogs:
        tokens = torch.tensor([ids[:-1]], device=device)
        labels = torch.tensor([ids[1:]], device=device)
        labels[torch.tensor([mask[1:]], device=device) == 0] = IGNORE_INDEX
        hidden = model(tokens, return_hidden=True)
        loss, n = chunked_cross_entropy(hidden, model.lm_head.weight, labels)
        total, count = total + float(loss), count + int(n)
    return total / max(count, 1)
