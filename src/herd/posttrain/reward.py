"""Reward model: a Llama backbone with a scalar head, trained on preference pairs.

The score of a sequence is ``score(h_last)``: a bias-free ``Linear(dim, 1)`` on the
final hidden state of its last token (the response's end token), as transformers'
``LlamaForSequenceClassification`` (``num_labels = 1``) computes it. The loss is
Llama 3's pairwise ranking loss without the margin term of Llama 2:

    loss = -log sigmoid(r(chosen) - r(rejected))

and rankings of more than two responses (edited > chosen > rejected) arrive expanded to
every ordered pair (``herd.posttrain.pairs``). The model saves as
``LlamaForSequenceClassification``: the backbone under HF's names, ``score.weight``,
no LM head, ``num_labels = 1`` and a ``pad_token_id`` so transformers finds each row's
last real token in a right-padded batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from herd.model import ModelArgs, Transformer
from herd.posttrain.config import PosttrainConfig
from herd.posttrain.lora import merge_lora
from herd.posttrain.pairs import Pair, PairBatch, PairLoader, load_pairs
from herd.posttrain.qlora import dequantize_model
from herd.posttrain.setup import configure, load_tokenizer, make_prepare, plain_model, write_report
from herd.tokenizer import Tokenizer
from herd.train import TrainResult, pretrain
from herd.train.distributed import DistInfo, full_state_dict

ARCHITECTURE = "LlamaForSequenceClassification"


def add_score_head(model: nn.Module, seed: int = 0) -> nn.Module:
    """Attach ``model.score`` = Linear(dim, 1, bias=False), N(0, 0.02) like transformers' init."""
    dim = model.args.dim
    weight = model.model.embed_tokens.weight
    model.score = nn.Linear(dim, 1, bias=False, device=weight.device, dtype=weight.dtype)
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(1, dim, generator=g) * 0.02)
    if model.lm_head.weight is not weight:  # an untied LM head is unused: frozen, it has no optimizer state
        model.lm_head.weight.requires_grad_(False)  # that a resumed run would look for and not find
    return model


def sequence_rewards(model: nn.Module, tokens: Tensor, lengths: Tensor) -> Tensor:
    """(B,) scalar rewards: the score head on each row's last real token (right padding)."""
    hidden = model(tokens, return_hidden=True)
    last = hidden[torch.arange(tokens.shape[0], device=tokens.device), lengths.to(tokens.device) - 1]
    return model.score(last).squeeze(-1).float()


def pair_rewards(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """Rewards of the chosen and the rejected responses, in one forward."""
    width = max(batch.chosen.shape[1], batch.rejected.shape[1])
    tokens = torch.cat([F.pad(batch.chosen, (0, width - batch.chosen.shape[1])),
                        F.pad(batch.rejected, (0, width - batch.rejected.shape[1]))])
    rewards = sequence_rewards(model, tokens, torch.cat([batch.chosen_len, batch.rejected_len]))
    b = batch.chosen.shape[0]
    return rewards[:b], rewards[b:]


@dataclass
class PairwiseRewardLoss:
    """The trainer objective: ``-log sigmoid(r_c - r_r)`` summed over the pairs; accuracy and margin."""

    def __call__(self, model: nn.Module, batch: PairBatch) -> tuple[Tensor, int, dict[str, float]]:
        r_c, r_r = pair_rewards(model, batch)
        margin = r_c - r_r
        loss = -F.logsigmoid(margin)
        return loss.sum(), batch.n_targets, {"accuracy": float((margin > 0).sum()), "margin": float(margin.sum())}


@torch.no_grad()
def reward_accuracy(model: nn.Module, pairs: list[Pair], batch_size: int = 8) -> float:
    """Share of pairs whose chosen response gets the higher reward (held-out accuracy)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    right = 0
    for start in range(0, len(pairs), batch_size):
        r_c, r_r = pair_rewards(model, PairBatch.from_pairs(pairs[start:start + batch_size]).to(device))
        right += int((r_c > r_r).sum())
    model.train(was_training)
    return right / len(pairs)


def save_reward_model(model: nn.Module, out_dir: str | Path, *, tokenizer: Tokenizer | None = None,
                      pad_token_id: int | None = None) -> Path:
    """Write ``model`` (a Transformer with ``score``) as ``LlamaForSequenceClassification``."""
    from safetensors.torch import save_file

    from herd.checkpoint import save_pretrained
    from herd.checkpoint.hf import CONFIG_NAME, WEIGHTS_NAME

    out = save_pretrained(model, out_dir, tokenizer=tokenizer, max_shard_size=1 << 62)  # config, tokenizer
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if not k.startswith("lm_head.")}
    tmp = out / f".{WEIGHTS_NAME}.tmp"
    save_file(state, tmp, metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_NAME)
    config = json.loads((out / CONFIG_NAME).read_text())
    pad = pad_token_id if pad_token_id is not None else (tokenizer.pad_id if tokenizer is not None else None)
    config.update(architectures=[ARCHITECTURE], num_labels=1, pad_token_id=pad,
                  id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, tie_word_embeddings=False)
    tmp = out / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / CONFIG_NAME)
    return out


def load_reward_model(path: str | Path, *, device: str | torch.device = "cpu") -> Transformer:
    """A herd Transformer with its ``score`` head from a ``LlamaForSequenceClassification`` directory."""
    from safetensors.torch import load_file

    from herd.checkpoint.hf import read_hf_args, weight_files

    args, config = read_hf_args(path)
    if ARCHITECTURE not in (config.get("architectures") or []):
        raise ValueError(f"{Path(path) / 'config.json'}: architectures {config.get('architectures')} is not "
                         f"[{ARCHITECTURE!r}]: not a reward model")
    state: dict[str, Tensor] = {}
    for f in weight_files(path):
        state.update(load_file(f))
    model = add_score_head(Transformer(args))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.startswith("lm_head.")]
    if missing or unexpected:
        raise ValueError(f"{path}: reward model weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.to(device).eval()


def run_reward(cfg: PosttrainConfig) -> TrainResult:
    """Train a reward model on ``reward.data`` through the trainer; export as LlamaForSequenceClassification."""
    from herd.train.distributed import init_distributed

    tokenizer, tok_source = load_tokenizer(cfg)
    configure(cfg)
    train = cfg.train
    pairs = load_pairs(cfg.method.data, tokenizer, max_len=cfg.method.max_len or train.data.seq_len)
    info = init_distributed(train.train.device)
    if info.sharded:  # the score head is added after FSDP2 wraps the model: its gradients would not be reduced
        raise ValueError("reward-model training runs on one device for now (no torchrun)")
    loader = PairLoader(pairs, seed=train.train.seed, rank=info.dp_rank, world_size=info.dp_size)
    train.data.tokenizer = tok_source

    def export(model: nn.Module, args: ModelArgs, info: DistInfo, out_dir: Path) -> Path | None:
        state = full_state_dict(model)
        if not info.is_main:
            return None
        plain = add_score_head(plain_model(model, args, state, cfg))
        if cfg.lora.rank:
            merge_lora(plain)
            if cfg.lora.base_quantization:  # QLoRA: a plain (dequantized) backbone
                dequantize_model(plain)
        plain.score.weight.data.copy_(state["score.weight"])
        return save_reward_model(plain, out_dir, tokenizer=tokenizer)

    result = pretrain(train, objective=PairwiseRewardLoss(), loader=loader,
                      prepare_model=make_prepare(cfg, lambda m: add_score_head(m, train.train.seed)), export=export)
    if cfg.method.held_out and result.export_dir is not None and info.is_main:
        held = load_pairs(cfg.method.held_out, tokenizer)
        write_report(train.run_dir, "held_out", {"data": cfg.method.held_out, "pairs": len(held),
                                                  "accuracy": reward_accuracy(load_reward_model(result.export_dir),
                                                                              held)})
    return result
