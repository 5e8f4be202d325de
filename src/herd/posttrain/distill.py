"""Logit distillation: a student learns from a teacher's next-token distributions.

Per target token (the same packed, document-masked rows as pre-training):

    loss = kl_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - kl_weight) * CE(student, label)

the forward KL of Hinton et al. on temperature-``T`` logits (``T^2`` keeps its gradient
scale independent of ``T``) mixed with the hard-label cross-entropy, as Llama 3.2's
1B/3B were distilled from 8B/70B logits. Teacher and student share the tokenizer
(checked: same vocabulary size); their architectures may differ. The teacher runs
frozen, in the same forward pass, over exactly the student's rows; only the positions
that have a label go through either LM head, ``chunk_size`` positions at a time.

Metrics per step: ``ce`` and ``kl`` (per target token). Precomputed teacher top-k
logits in a shard sidecar (``herd.data.shards``) are not consumed yet: the teacher
runs live.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from herd.model import DocumentMaskedAttention
from herd.posttrain.config import PosttrainConfig
from herd.posttrain.setup import configure, make_export, make_prepare, write_report
from herd.train import Batch, TrainResult, pretrain
from herd.train.config import ConfigError
from herd.train.loss import IGNORE_INDEX


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, temperature: float,
                 kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss sum, CE sum, T^2-scaled KL sum) over rows of (N, vocab) logits with labels (N,)."""
    s = student_logits.float()
    t = teacher_logits.float()
    ce = F.cross_entropy(s, labels, reduction="sum")
    log_p_teacher = F.log_softmax(t / temperature, -1)
    log_p_student = F.log_softmax(s / temperature, -1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum() * temperature ** 2
    return kl_weight * kl + (1 - kl_weight) * ce, ce.detach(), kl.detach()


@dataclass
class Distill:
    """The trainer objective over ``herd.train.loader.Batch`` rows."""

    teacher: nn.Module
    temperature: float = 2.0
    kl_weight: float = 0.5
    chunk_size: int = 1024
    document_masking: bool = True

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int, dict[str, float]]:
        attention = DocumentMaskedAttention(batch.document_ids) if self.document_masking else None
        hidden = model(batch.tokens, batch.positions, attention, return_hidden=True)
        with torch.no_grad():
            teacher_attention = DocumentMaskedAttention(batch.document_ids) if self.document_masking else None
            teacher_hidden = self.teacher(batch.tokens, batch.positions, teacher_attention, return_hidden=True)
        valid = batch.labels != IGNORE_INDEX
        h, th, y = hidden[valid], teacher_hidden[valid], batch.labels[valid]
        total = hidden.new_zeros((), dtype=torch.float32)
        ce_sum = kl_sum = 0.0
        for start in range(0, y.shape[0], self.chunk_size):
            part = slice(start, start + self.chunk_size)
            with torch.no_grad():
                t_logits = self.teacher.lm_head(th[part])
            loss, ce, kl = distill_loss(model.lm_head(h[part]), t_logits, y[part], temperature=self.temperature,
                                        kl_weight=self.kl_weight)
            total = total + loss
            ce_sum, kl_sum = ce_sum + float(ce), kl_sum + float(kl)
        return total, int(batch.n_targets), {"ce": ce_sum, "kl": kl_sum}


@torch.no_grad()
def held_out_loss(model: nn.Module, loader, batches: int, rows: int) -> float:
    """Mean next-token cross-entropy over ``batches`` batches of a loader (document-masked)."""
    from herd.train.objective import CausalLM

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for _ in range(batches):
        batch = loader.next_batch(rows)
        loss, n, _ = CausalLM()(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def run_distill(cfg: PosttrainConfig) -> TrainResult:
    """Distil ``distill.teacher`` into the [model] student (or ``base.model``) on ``[data]``."""
    from herd.checkpoint import load_any
    from herd.train.distributed import init_distributed

    args = configure(cfg)
    train = cfg.train
    info = init_distributed(train.train.device)
    teacher = load_any(cfg.method.teacher, dtype=torch.float32, device=info.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if teacher.args.vocab_size != args.vocab_size:
        raise ConfigError(f"distill.teacher has a vocabulary of {teacher.args.vocab_size}, the student "
                          f"{args.vocab_size}: teacher and student must share the tokenizer")
    tokenizer = None
    if cfg.base.tokenizer or cfg.base.model:
        from herd.posttrain.setup import load_tokenizer

        tokenizer, train.data.tokenizer = load_tokenizer(cfg)
    objective = Distill(teacher, cfg.method.temperature, cfg.method.kl_weight, train.train.loss_chunk_size,
                        train.data.document_masking)
    result = pretrain(train, objective=objective, prepare_model=make_prepare(cfg),
                      export=make_export(cfg, tokenizer))
    if cfg.method.held_out and result.export_dir is not None and info.is_main:
        from herd.train.loader import PackedLoader, Source

        loader = PackedLoader([Source("held_out", [Path(p) for p in cfg.method.held_out])],
                              train.data.seq_len, seed=0, document_masking=train.data.document_masking)
        write_report(train.run_dir, "held_out", {"data": cfg.method.held_out, "loss": held_out_loss(
            load_any(result.export_dir), loader, 4, train.train.global_batch_rows)})
    return result
