"""Training objectives: what a batch costs, as a loss sum over its targets.

The loop knows nothing about what is being learnt. An ``Objective`` maps a model and a
batch to ``(loss_sum, n_targets, metrics)``; the loop sums ``loss_sum`` over the
micro-batches of a step and divides by the targets counted over all micro-batches and
ranks. Pre-training uses ``CausalLM``; post-training's SFT (loss-masked labels), DPO
and distillation objectives plug into the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor, nn

from herd.model import DocumentMaskedAttention
from herd.train.loss import chunked_cross_entropy


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, int, dict[str, float]]:
        """(loss summed over the batch's targets, number of targets, extra metrics)."""
        ...


@dataclass
class CausalLM:
    """Next-token cross-entropy, attention masked to each packed document.

    The batch carries ``tokens``, ``labels`` (-100 = no target), ``positions``,
    ``document_ids`` and ``n_targets`` (``herd.train.loader.Batch``).
    """

    chunk_size: int = 1024
    document_masking: bool = True
    loss_mode: str = "recompute"  # herd.train.loss: "recompute" (least memory) or "fused" (no recompute)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, int, dict[str, float]]:
        attention = DocumentMaskedAttention(batch.document_ids) if self.document_masking else None
        hidden = model(batch.tokens, batch.positions, attention, return_hidden=True)
        loss_sum, _ = chunked_cross_entropy(hidden, model.lm_head.weight, batch.labels, self.chunk_size,
                                            mode=self.loss_mode)
        return loss_sum, int(batch.n_targets), {}
