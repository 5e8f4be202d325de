"""The Llama 3.x network, top to bottom.

Parameter names and the rotary layout are Hugging Face's (``model.layers.N.self_attn.
q_proj`` ..., rotate-half RoPE), so a HF checkpoint loads without copying. Meta's names
and interleaved layout are mapped in ``herd.checkpoint.meta``. Nothing here knows about
parallelism, caches or file formats: attention goes through an ``AttentionBackend``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herd.model.args import ModelArgs
from herd.model.attention import CAUSAL, AttentionBackend


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 whatever the activation dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Inverse RoPE frequencies, with Llama 3.1's frequency-dependent scaling when configured.

    Wavelengths shorter than original_context/high_freq_factor are kept, those longer than
    original_context/low_freq_factor are divided by ``factor``, and the band in between
    is interpolated smoothly. Computed in fp32 on the CPU, in the same operation order
    as the reference implementations, so the values are bit-identical to theirs.
    """
    dim = args.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim  # CPU even under meta
    inv_freq = 1.0 / (args.rope_theta ** exponents)
    s = args.rope_scaling
    if s is None:
        return inv_freq
    old_context_len = s.original_max_position_embeddings
    low_freq_wavelen = old_context_len / s.low_freq_factor
    high_freq_wavelen = old_context_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old_context_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / s.factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


class RotaryEmbedding(nn.Module):
    """cos/sin for arbitrary (per-row) positions. The frequencies stay fp32 when the
    model is cast to bf16 (they are not a buffer), and no max_seq_len table is stored."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.inv_freq_cpu = rope_inv_freq(args)
        self._inv_freq: dict[torch.device, Tensor] = {}

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        inv = self._inv_freq.get(positions.device)
        if inv is None:
            inv = self._inv_freq.setdefault(positions.device, self.inv_freq_cpu.to(positions.device))
        freqs = positions[..., None].float() * inv  # (B, T, head_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, T, head_dim)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, backend: AttentionBackend) -> Tensor:
        b, t, _ = x.shape
        # heads counted from the width, not n_heads: under tensor parallelism a rank holds some of them
        q = self.q_proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        k = self.k_proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = backend.attend(self.layer_id, q, k, v)  # (B, n_heads, T, head_dim)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.down_proj = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, layer_id)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = FeedForward(args)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, backend: AttentionBackend) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, backend)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embeddings, the stack of blocks and the final norm (HF's ``LlamaModel``)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.rotary = RotaryEmbedding(args)

    def forward(self, tokens: Tensor, positions: Tensor, backend: AttentionBackend) -> Tensor:
        h = self.embed_tokens(tokens)
        cos, sin = self.rotary(positions, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin, backend)
        return self.norm(h)


class Transformer(nn.Module):
    """Llama 3.x causal language model (HF's ``LlamaForCausalLM`` layout)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = Decoder(args)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor | None = None,
        attention: AttentionBackend | None = None,
        *,
        return_hidden: bool = False,
    ) -> Tensor:
        """tokens (B, T) -> logits (B, T, vocab), or the final hidden states (B, T, dim)
        with ``return_hidden`` (for chunked losses and last-token-only generation).

        ``positions`` (B, T) or (T,) default to 0..T-1; ``attention`` defaults to causal
        attention over this call's tokens.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq_len), got shape {tuple(tokens.shape)}")
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        if positions.dim() == 1:
            positions = positions.expand(tokens.shape[0], -1)
        h = self.model(tokens, positions, attention or CAUSAL)
        return h if return_hidden else self.lm_head(h)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Pre-training initialisation: N(0, std) for embeddings and input projections,
        output projections (o_proj, down_proj) scaled down with depth by
        1/sqrt(2 * (layer + 1)), norms at 1, and the LM head at N(0, dim**-0.5)."""
        for name, init in self.init_plan(std):
            init(self.get_parameter(name), generator)

    def init_plan(self, std: float = 0.02) -> list[tuple[str, Callable[[Tensor, torch.Generator | None], None]]]:
        """``init_weights`` as (parameter name, in-place initialiser) in the order the random
        numbers are drawn, so a tensor can be initialised alone (one at a time on one rank,
        then scattered to its shards) and still get the values the whole model would."""
        def normal(s: float):
            return lambda t, g: nn.init.normal_(t, std=s, generator=g)

        def trunc(s: float):
            return lambda t, g: nn.init.trunc_normal_(t, std=s, a=-3 * s, b=3 * s, generator=g)

        def ones(t: Tensor, g: torch.Generator | None) -> None:
            t.fill_(1.0)

        tied = self.args.tie_word_embeddings
        embed_std = self.args.dim ** -0.5 if tied else std  # a tied table is also the output head
        plan = [("model.embed_tokens.weight", normal(embed_std))]
        for i in range(self.args.n_layers):
            depth_std = std / math.sqrt(2 * (i + 1))
            block = f"model.layers.{i}"
            for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
                plan.append((f"{block}.{name}.weight", trunc(std)))
            for name in ("self_attn.o_proj", "mlp.down_proj"):
                plan.append((f"{block}.{name}.weight", trunc(depth_std)))
            plan += [(f"{block}.input_layernorm.weight", ones), (f"{block}.post_attention_layernorm.weight", ones)]
        plan.append(("model.norm.weight", ones))
        if not tied:
            plan.append(("lm_head.weight", trunc(self.args.dim ** -0.5)))
        return plan

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts tied tensors once
