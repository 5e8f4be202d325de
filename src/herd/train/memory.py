"""How much memory one rank needs to train a model: weights, gradients, optimizer state,
activations and logits, before anything is allocated.

Activations are counted the way autograd keeps them: the tensors each op of
``herd.model.transformer`` saves for its backward pass, per token, per layer (checked
tensor by tensor against ``torch.autograd.graph.saved_tensors_hooks`` in the tests).
With ``n = dim``, ``q = n_heads * head_dim``, ``k = n_kv_heads * head_dim``, ``f = ffn_dim``,
``h = n_heads`` and ``a`` the compute dtype's bytes, one block keeps per token:

- each RMSNorm: its fp32 input (4n), the fp32 1/rms (4), the normalised tensor (a*n) and
  the scaled output that the next projections save (a*n);
- attention (SDPA flash / memory-efficient / flex kernels: no T x T scores): q, k, v after
  RoPE (a*q + 2*a*k), the output that o_proj also saves (a*q) and the fp32 log-sum-exp (4h).
  RoPE itself keeps only cos/sin, shared by all layers;
- the dense document mask of the CPU path (``DocumentMaskedAttention`` without flex) adds
  a (B, 1, T, T) additive mask in the compute dtype per layer (a*T per token), besides
  the boolean mask itself (T bytes per token, once);
- SwiGLU: gate output, its SiLU, up output, and their product (4*a*f).

Under ``torch.autocast`` over fp32 weights (herd's single-device trainer) the residual
stream stays fp32 (the norms keep 4n + 4n + 4), every projection saves its own bf16
copy of its input (5*a*n per block) and a bf16 copy of its weight (``cast_weights``).
With activation checkpointing only each block's input is kept, plus one block
recomputed during the backward. ``torch.compile`` fuses norms and SwiGLU and keeps less;
this is the eager count, an upper bound for compiled runs.

The logits, with the full cross-entropy: the logits (a*V), their fp32 copy and
log-softmax (8*V) per token; with ``herd.train.loss.chunked_cross_entropy`` one chunk's.
Not counted: the allocator's fragmentation and reserve, temporaries inside an op,
communication buffers beyond one gathered unit, the CUDA context (~0.5-1 GB).

Checked on one H100 (torch 2.11, 2026-11-22; Llama 3.2 1B/3B shapes, T = 4096-8192,
bf16 and autocast, with and without checkpointing and chunked loss): the saved-tensor
count matched autograd's to the byte, and ``total`` was 1% to 16% above
``torch.cuda.max_memory_allocated`` (it is an upper bound: it counts every gradient
as live at the end of the forward pass, when most are not allocated yet).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from herd.model import ModelArgs

if TYPE_CHECKING:
    from herd.train.config import Config

Attention = Literal["flash", "dense_mask"]
Optimizer = Literal["adamw", "sgd", "none"]

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
GiB = 1 << 30


def _dtype_bytes(name: str, what: str) -> int:
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise ValueError(f"{what}: unknown dtype {name!r} (use float32, bfloat16 or float16)") from None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank. ``total`` is the peak when every part is live at once (the end of
    the forward pass, with gradients kept from the previous step)."""

    weights: int
    master_weights: int
    gradients: int
    optimizer: int
    gathered: int  # FSDP: unsharded parameters (current + prefetched unit) and one unit's gradient
    activations: int
    cast_weights: int  # autocast: bf16 copies of the weights kept for the backward
    logits: int
    tokens_per_rank: int

    @property
    def states(self) -> int:
        return self.weights + self.master_weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.gathered + self.activations + self.cast_weights + self.logits

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}

    def table(self) -> str:
        rows = [(name.replace("_", " "), value) for name, value in asdict(self).items() if name != "tokens_per_rank"]
        rows.append(("total", self.total))
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value / GiB:9.2f} GiB" for name, value in rows]
        lines.insert(-1, "-" * len(lines[0]))
        return "\n".join(lines)


def _layer_linear_params(args: ModelArgs) -> int:
    d, hd = args.dim, args.head_dim
    return d * hd * (2 * args.n_heads + 2 * args.n_kv_heads) + 3 * d * args.ffn_dim


def layer_activation_bytes_per_token(args: ModelArgs, *, compute_bytes: int, autocast: bool,
                                     attention: Attention = "flash", seq_len: int = 0, tp: int = 1) -> int:
    """Bytes one transformer block saves for its backward, per token (see the module doc)."""
    a, d = compute_bytes, args.dim
    q = args.n_heads * args.head_dim // tp
    kv = args.n_kv_heads * args.head_dim // tp
    heads, f = args.n_heads // tp, args.ffn_dim // tp
    if autocast:
        norms = 2 * (8 * d + 4) + 5 * a * d  # fp32 residual; each projection casts its input
    else:
        norms = 2 * ((4 + 2 * a) * d + 4)
    attn = 2 * a * q + 2 * a * kv + 4 * heads
    if attention == "dense_mask":
        attn += a * seq_len
    return norms + attn + 4 * a * f


def _model_activation_bytes_per_token(args: ModelArgs, a: int, autocast: bool, chunked: bool) -> int:
    """Outside the blocks: token ids, cos/sin, the final norm and the LM head's input."""
    rope = 2 * (4 if autocast else a) * args.head_dim
    if autocast:
        final = 8 * args.dim + 4 + (4 if chunked else a) * args.dim
    else:
        final = (4 + 2 * a) * args.dim + 4
    return 8 + rope + final


def estimate_memory(
    args: ModelArgs,
    *,
    seq_len: int,
    micro_batch_rows: int = 1,
    dp: int = 1,
    tp: int = 1,
    param_dtype: str = "bfloat16",
    grad_dtype: str | None = None,
    master_fp32: bool = True,
    autocast: bool = False,
    optimizer: Optimizer = "adamw",
    activation_checkpointing: bool = False,
    chunked_ce_chunk: int | None = None,
    attention: Attention = "flash",
) -> MemoryEstimate:
    """Memory per rank for one micro-batch of ``micro_batch_rows`` x ``seq_len`` tokens.

    ``dp``: ranks the parameters, gradients and optimizer state are sharded over (FSDP /
    ZeRO-3); ``tp``: tensor-parallel degree (weights and the head/FFN-sharded activations
    divided by it). ``param_dtype``: the dtype the forward computes in. ``master_fp32``:
    an fp32 copy of the (sharded) parameters is kept for the optimizer, and gradients and
    optimizer state are fp32 (``grad_dtype`` overrides the gradients). ``autocast``: the
    parameters are fp32 and ``torch.autocast(param_dtype)`` casts per op (herd's
    single-device trainer); the fp32 parameters are then the master copy.
    ``chunked_ce_chunk``: tokens per chunk of ``chunked_cross_entropy``; None = full logits.
    """
    for name, value in (("seq_len", seq_len), ("micro_batch_rows", micro_batch_rows), ("dp", dp), ("tp", tp)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if attention not in ("flash", "dense_mask"):
        raise ValueError(f"attention must be 'flash' or 'dense_mask', got {attention!r}")
    if optimizer not in ("adamw", "sgd", "none"):
        raise ValueError(f"optimizer must be 'adamw', 'sgd' or 'none', got {optimizer!r}")
    if chunked_ce_chunk is not None and chunked_ce_chunk <= 0:
        raise ValueError(f"chunked_ce_chunk must be positive or None, got {chunked_ce_chunk}")
    for name, value in (("n_heads", args.n_heads), ("n_kv_heads", args.n_kv_heads), ("ffn_dim", args.ffn_dim)):
        if value % tp:
            raise ValueError(f"tp={tp} does not divide {name}={value}")
    a = _dtype_bytes(param_dtype, "param_dtype")
    fp32_master = autocast or (master_fp32 and a != 4)
    g = _dtype_bytes(grad_dtype, "grad_dtype") if grad_dtype else (4 if fp32_master or a == 4 else a)
    shards = dp * tp
    n = args.num_params()

    weights = (4 if autocast else a) * n // shards
    master = 4 * n // shards if fp32_master and not autocast else 0
    state_bytes = 4 if fp32_master or a == 4 else a
    opt = {"adamw": 2, "sgd": 1, "none": 0}[optimizer] * state_bytes * n // shards

    head_params = 0 if args.tie_word_embeddings else args.vocab_size * args.dim + args.dim
    largest_unit = max(_layer_linear_params(args) + 2 * args.dim, args.vocab_size * args.dim, head_params)
    gathered = (2 * (4 if autocast else a) + g) * largest_unit // tp if dp > 1 else 0

    tokens = micro_batch_rows * seq_len
    layer = layer_activation_bytes_per_token(args, compute_bytes=a, autocast=autocast, attention=attention,
                                             seq_len=seq_len, tp=tp)
    outside = _model_activation_bytes_per_token(args, a, autocast, chunked_ce_chunk is not None)
    if attention == "dense_mask":
        outside += seq_len  # the boolean (B, 1, T, T) mask itself, shared by the layers
    if activation_checkpointing:
        residual = 4 if autocast else a
        per_token = args.n_layers * residual * args.dim + layer + outside
    else:
        per_token = args.n_layers * layer + outside
    activations = per_token * tokens

    cast = 0
    if autocast:
        layers_cast = 1 if activation_checkpointing else args.n_layers
        head_cast = 0 if chunked_ce_chunk is not None else args.vocab_size * args.dim
        cast = a * (layers_cast * _layer_linear_params(args) + head_cast) // tp

    logit_tokens = tokens if chunked_ce_chunk is None else min(chunked_ce_chunk, tokens)
    logits = logit_tokens * (args.vocab_size // tp) * (a + 8)
    return MemoryEstimate(weights=weights, master_weights=master, gradients=g * n // shards, optimizer=opt,
                          gathered=gathered, activations=activations, cast_weights=cast, logits=logits,
                          tokens_per_rank=tokens)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str | int | float) -> int:
    """``"80GB"`` (10^9), ``"80GiB"`` (2^30), ``"512MiB"``, ``"1.5e9"`` -> bytes."""
    if isinstance(text, int | float):
        return int(text)
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"cannot read {text!r} as a memory size (e.g. 80GB, 80GiB, 512MiB)")
    unit = (m.group(2) or "b").lower()
    power = "bkmgt".index(unit[0])
    base = 1024 if "i" in unit else 1000
    return int(float(m.group(1)) * base**power)


def check_fits(estimate: MemoryEstimate, device_bytes: int, *, headroom: float = 0.9) -> str | None:
    """A warning to print when the estimate exceeds ``headroom`` of the device's memory
    (the rest goes to the allocator, temporaries and the CUDA context); None when it fits."""
    budget = device_bytes * headroom
    if estimate.total <= budget:
        return None
    parts = {k: v for k, v in estimate.to_dict().items() if k not in ("total", "tokens_per_rank")}
    biggest = sorted(parts, key=parts.get, reverse=True)[:2]
    hints = []
    if "activations" in biggest or "cast_weights" in biggest:
        hints.append("turn on activation checkpointing or use a smaller micro-batch")
    if "logits" in biggest:
        hints.append("use chunked cross-entropy (train.loss_chunk_size)")
    if {"optimizer", "weights", "master_weights", "gradients"} & set(biggest):
        hints.append("shard over more data-parallel ranks (FSDP) or use tensor parallelism")
    return (f"estimated peak memory {estimate.total / GiB:.1f} GiB exceeds {headroom:.0%} of the device's "
            f"{device_bytes / GiB:.1f} GiB (largest: {', '.join(biggest)}); " + "; ".join(hints))


def estimate_for_config(cfg: Config, *, world_size: int = 1, device: str = "cpu") -> MemoryEstimate:
    """The estimate for a training run's config on ``world_size`` ranks of ``device``: the
    trainer's own choices (fp32 master weights, bf16 autocast on one GPU or FSDP2
    mixed precision when sharded, AdamW, chunked cross-entropy, the dense document mask
    that SDPA gets on a CPU)."""
    args = ModelArgs.from_name(cfg.model.preset, **cfg.model.overrides)
    dtype = cfg.train.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    dense = cfg.data.document_masking and not device.startswith("cuda")
    return estimate_memory(args, seq_len=cfg.data.seq_len, micro_batch_rows=cfg.train.micro_batch_rows,
                           dp=world_size, param_dtype=dtype, master_fp32=True,
                           autocast=world_size == 1 and dtype != "float32",
                           activation_checkpointing=cfg.train.activation_checkpointing,
                           chunked_ce_chunk=cfg.train.loss_chunk_size,
                           attention="dense_mask" if dense else "flash")
