"""How much memory serving a model takes: weights + KV cache bytes per token.

The engine sizes its paged cache from a memory budget with these numbers, and a user can
ask for them before loading anything (``estimate_serving_memory`` or ``herd engine
memory``). Per token, every layer keeps one key and one value vector per KV head:
``2 * n_layers * n_kv_heads * head_dim * bytes(dtype)`` — 128 KiB for Llama 3 8B in
bf16, 32 KiB for Llama 3.2 1B; an int8 cache (``kv_dtype=torch.int8``) stores a byte per
number plus an fp32 scale per vector, 66 KiB for 8B. Weights are the parameter count times the bytes of their
dtype (a tied embedding counted once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from herd.model.args import ModelArgs
from herd.train.memory import parse_bytes  # noqa: F401  (sizes read the same way as `herd memory`)

GiB = 1 << 30


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kv_bytes_per_token(args: ModelArgs, dtype: torch.dtype) -> int:
    """Keys and values of one token; an int8 cache adds an fp32 scale per vector (``PagedKVCache``)."""
    per_vector = args.head_dim + 4 if dtype == torch.int8 else args.head_dim * dtype_bytes(dtype)
    return 2 * args.n_layers * args.n_kv_heads * per_vector


@dataclass(frozen=True)
class ServingMemory:
    """The weights' bytes, the KV bytes per token and what a budget leaves for the cache."""

    weights: int
    kv_per_token: int
    budget: int | None = None
    block_size: int = 16

    @property
    def kv_budget(self) -> int | None:
        return None if self.budget is None else max(0, self.budget - self.weights)

    @property
    def max_tokens(self) -> int | None:
        """Tokens of KV the budget holds after the weights (whole blocks)."""
        if self.kv_budget is None:
            return None
        return self.num_blocks * self.block_size

    @property
    def num_blocks(self) -> int:
        if self.kv_budget is None:
            raise ValueError("no memory budget given: the number of KV blocks is unknown")
        return self.kv_budget // (self.kv_per_token * self.block_size)

    def kv_bytes(self, tokens: int) -> int:
        return tokens * self.kv_per_token

    def summary(self) -> str:
        lines = [f"weights: {self.weights / GiB:.3f} GiB",
                 f"KV cache: {self.kv_per_token / 1024:.1f} KiB per token"]
        if self.budget is not None:
            lines.append(f"budget {self.budget / GiB:.3f} GiB leaves {self.kv_budget / GiB:.3f} GiB of KV: "
                         f"{self.num_blocks} blocks of {self.block_size} = {self.max_tokens} tokens")
        return "\n".join(lines)


def estimate_serving_memory(args: ModelArgs, dtype: torch.dtype = torch.bfloat16, *, budget: int | None = None,
                            block_size: int = 16, weight_bytes: int | None = None,
                            kv_dtype: torch.dtype | None = None) -> ServingMemory:
    """Weights and KV bytes per token of ``args`` in ``dtype``; with ``budget`` (bytes of
    memory for weights + cache), how many KV blocks fit. ``weight_bytes`` overrides the
    weights' size (a quantized model: pass the bytes of its state_dict)."""
    if budget is not None and budget <= 0:
        raise ValueError(f"memory budget must be > 0 bytes, got {budget}")
    weights = args.num_params() * dtype_bytes(dtype) if weight_bytes is None else weight_bytes
    return ServingMemory(weights, kv_bytes_per_token(args, kv_dtype or dtype), budget, block_size)


def model_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a loaded model's parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
