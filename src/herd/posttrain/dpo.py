"""Direct preference optimisation with Llama 3's changes, as an objective of the trainer.

Per pair, with policy log-probs ``pi_c, pi_r`` and reference log-probs ``ref_c, ref_r``
(sums over the response's content tokens, see ``sequence_logps``):

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))  +  nll_coef * (-pi_c / n_c)

- ``beta`` = 0.1 (Llama 3).
- Headers, ``<|python_tag|>`` and ``<|eot_id|>`` / ``<|eom_id|>`` are masked out of
  both responses (``herd.posttrain.pairs``): shared formatting carries no preference and
  pushing it both ways destabilises it (Llama 3, section 4.1.4).
- The NLL term on the chosen response (coefficient 0.2, Llama 3 after RPO) is
  normalised **per sequence**: the chosen response's summed NLL divided by its own
  content-token count ``n_c``, then averaged over the pairs of the step like the DPO
  term. Per-pair normalisation is what keeps the step loss exact under gradient
  accumulation and data parallelism (the trainer averages over pairs). TRL's
  ``loss_type=["sigmoid", "sft"]`` instead averages the NLL over every chosen token of
  its batch; the two agree when the chosen responses have equal lengths (the tests
  check both statements).
- Reference log-probs are computed once, before training, with the base model, and
  cached beside the run (``dpo-reference.pt``, keyed by the data and base): no
  reference model is held in memory while training.

Metrics per step (means over the step's pairs): ``reward_accuracy`` (the implicit reward
``beta * (pi - ref)`` ranks chosen above rejected), ``reward_margin``, ``reward_chosen``,
``reward_rejected``, ``dpo_loss`` and ``nll``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from herd.posttrain.config import PosttrainConfig
from herd.posttrain.pairs import Pair, PairBatch, PairLoader, load_pairs
from herd.posttrain.setup import configure, load_tokenizer, make_export, make_prepare, reference_model, write_report
from herd.train import TrainResult, pretrain

REFERENCE_CACHE = "dpo-reference.pt"


def sequence_logps(model: nn.Module, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of log p(token) over the tokens where ``mask`` is 1, their count) per row.

    Only the masked positions go through the LM head, so long prompts cost no vocabulary-
    sized logits. ``tokens``/``mask``: (B, T); the first token is never a target.
    """
    hidden = model(tokens[:, :-1], return_hidden=True)
    target_mask = mask[:, 1:].bool()
    rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(target_mask)[target_mask]
    logits = model.lm_head(hidden[target_mask]).float()
    token_logp = torch.log_softmax(logits, -1).gather(1, tokens[:, 1:][target_mask][:, None]).squeeze(1)
    sums = torch.zeros(tokens.shape[0], dtype=torch.float32, device=tokens.device).index_add(0, rows, token_logp)
    return sums, target_mask.sum(1)


def pair_logps(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(chosen log-probs, rejected log-probs, chosen counts, rejected counts): one forward for both."""
    width = max(batch.chosen.shape[1], batch.rejected.shape[1])
    tokens = torch.cat([F.pad(batch.chosen, (0, width - batch.chosen.shape[1])),
                        F.pad(batch.rejected, (0, width - batch.rejected.shape[1]))])
    mask = torch.cat([F.pad(batch.chosen_mask, (0, width - batch.chosen.shape[1])),
                      F.pad(batch.rejected_mask, (0, width - batch.rejected.shape[1]))])
    logps, counts = sequence_logps(model, tokens, mask)
    b = batch.chosen.shape[0]
    return logps[:b], logps[b:], counts[:b], counts[b:]


def dpo_loss(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor, *, beta: float = 0.1,
             nll_coef: float = 0.0, n_c: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-pair losses (B,) and per-pair statistics; see the module docstring for the formula."""
    chosen_reward = beta * (pi_c - ref_c.to(pi_c.dtype))
    rejected_reward = beta * (pi_r - ref_r.to(pi_r.dtype))
    margin = chosen_reward - rejected_reward
    dpo = -F.logsigmoid(margin)
    losses = dpo
    nll = -pi_c / n_c.clamp_min(1).to(pi_c.dtype) if n_c is not None else torch.zeros_like(pi_c)
    if nll_coef:
        if n_c is None:
            raise ValueError("nll_coef > 0 needs the chosen responses' token counts n_c")
        losses = dpo + nll_coef * nll
    stats = {"reward_accuracy": (margin > 0).float(), "reward_margin": margin, "reward_chosen": chosen_reward,
             "reward_rejected": rejected_reward, "dpo_loss": dpo, "nll": nll}
    return losses, {k: v.detach() for k, v in stats.items()}


@dataclass
class DPO:
    """The trainer objective: loss summed over the micro-batch's pairs, metrics summed too."""

    beta: float = 0.1
    nll_coef: float = 0.2

    def __call__(self, model: nn.Module, batch: PairBatch) -> tuple[Tensor, int, dict[str, float]]:
        if batch.ref_chosen is None or batch.ref_rejected is None:
            raise ValueError("DPO batches need reference log-probs (PairLoader(reference=...))")
        pi_c, pi_r, n_c, _ = pair_logps(model, batch)
        losses, stats = dpo_loss(pi_c, pi_r, batch.ref_chosen, batch.ref_rejected, beta=self.beta,
                                 nll_coef=self.nll_coef, n_c=n_c)
        return losses.sum(), batch.n_targets, {k: float(v.sum()) for k, v in stats.items()}


@torch.no_grad()
def reference_logps(model: nn.Module, pairs: list[Pair], batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """Log-probs of every pair's chosen and rejected response under ``model`` (float64, CPU)."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = PairBatch.from_pairs(pairs[start:start + batch_size]).to(device)
        c, r, _, _ = pair_logps(model, batch)
        chosen.append(c.double().cpu())
        rejected.append(r.double().cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def cached_reference(cache: Path, key: str, compute) -> tuple[Tensor, Tensor]:
    """The reference log-probs stored in ``cache`` under ``key``, else computed and stored (atomically)."""
    if cache.exists():
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == key:
            return saved["chosen"], saved["rejected"]
    chosen, rejected = compute()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    torch.save({"key": key, "chosen": chosen, "rejected": rejected}, tmp)
    tmp.replace(cache)
    return chosen, rejected


def _data_key(cfg: PosttrainConfig, pairs: list[Pair]) -> str:
    h = hashlib.sha256()
    key = {"base": str(cfg.base.model), "n": len(pairs)}
    if cfg.lora.base_quantization:  # QLoRA's reference is the quantized base
        key["base_quantization"] = cfg.lora.base_quantization
    h.update(json.dumps(key).encode())
    for p in pairs:
        h.update(json.dumps([p.chosen, p.chosen_mask, p.rejected, p.rejected_mask]).encode())
    return h.hexdigest()


@torch.no_grad()
def preference_accuracy(model: nn.Module, pairs: list[Pair], reference: tuple[Tensor, Tensor],
                        batch_size: int = 8) -> float:
    """Share of pairs whose implicit reward (policy minus reference log-prob) ranks chosen first."""
    pi_c, pi_r = reference_logps(model, pairs, batch_size)
    return float(((pi_c - reference[0]) > (pi_r - reference[1])).double().mean())


def run_dpo(cfg: PosttrainConfig) -> TrainResult:
    """Reference log-probs once (cached), then DPO through the trainer."""
    from herd.checkpoint import load_any
    from herd.train.distributed import init_distributed

    tokenizer, tok_source = load_tokenizer(cfg)
    configure(cfg)
    train = cfg.train
    pairs = load_pairs(cfg.method.data, tokenizer, max_len=cfg.method.max_len or train.data.seq_len)
    if cfg.base.model is None:
        raise ValueError("DPO starts from a model: set base.model")
    info = init_distributed(train.train.device)

    def compute() -> tuple[Tensor, Tensor]:
        return reference_logps(reference_model(cfg, info.device), pairs, train.train.micro_batch_rows)

    reference = cached_reference(Path(train.run_dir) / REFERENCE_CACHE, _data_key(cfg, pairs), compute)
    loader = PairLoader(pairs, seed=train.train.seed, rank=info.dp_rank, world_size=info.dp_size,
                        reference=reference)
    train.data.tokenizer = tok_source
    result = pretrain(train, objective=DPO(cfg.method.beta, cfg.method.nll_coef), loader=loader,
                      prepare_model=make_prepare(cfg), export=make_export(cfg, tokenizer))
    if cfg.method.held_out and result.export_dir is not None and info.is_main:
        held = load_pairs(cfg.method.held_out, tokenizer)
        ref = reference_logps(reference_model(cfg), held)
        write_report(train.run_dir, "held_out", {
            "data": cfg.method.held_out, "pairs": len(held),
            "preference_accuracy": preference_accuracy(load_any(result.export_dir), held, ref)})
    return result
