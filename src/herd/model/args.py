"""Model hyper-parameters: one dataclass and the named presets of the Llama 3.x family.

The published models are described by Meta's ``params.json`` (dim, n_layers, n_heads,
n_kv_heads, ffn_dim_multiplier, multiple_of) and by Hugging Face's ``config.json``
(hidden_size, intermediate_size, rope_scaling ...). ``ModelArgs`` holds the Meta view;
the FFN width is derived exactly as Meta derives it, and the HF view is read and written
in ``herd.checkpoint.hf``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"rope_scaling.factor must be >= 1, got {self.factor}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                "rope_scaling.high_freq_factor must exceed low_freq_factor, got "
                f"{self.high_freq_factor} <= {self.low_freq_factor}"
            )
        if self.original_max_position_embeddings <= 0:
            raise ValueError("rope_scaling.original_max_position_embeddings must be positive")


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = 128256
    multiple_of: int = 1024
    ffn_dim_multiplier: float | None = 1.3
    # An explicit FFN width (HF's intermediate_size) wins over the Meta derivation.
    hidden_dim: int | None = None
    head_dim_override: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 8192
    tie_word_embeddings: bool = False
    # Token ids the checkpoint config records (HF config.json bos/eos).
    bos_token_id: int = 128000
    eos_token_id: int | list[int] = field(default_factory=lambda: 128001)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelArgs.{name} must be positive, got {getattr(self, name)}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelArgs.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim_override is None and self.dim % self.n_heads:
            raise ValueError(f"ModelArgs.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        """SwiGLU width: 2/3 of 4*dim, times ffn_dim_multiplier, rounded up to multiple_of."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count (tied embeddings counted once)."""
        d, hd = self.dim, self.head_dim
        attn = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2
        ffn = 3 * d * self.ffn_dim
        per_layer = attn + ffn + 2 * d
        total = self.n_layers * per_layer + d  # + final norm
        embed = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        if include_embedding:
            total += embed + head
        else:
            total += head
        return total

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6N + 12 * L * H * head_dim * T, N the parameters that
        take part in a matmul: every layer's and the output head's (vocab x dim), tied to
        the embedding or not; the embedding lookup itself is not a matmul and is left out
        (torchtitan's count, which for an untied model is the same number)."""
        n = self.num_params(include_embedding=False)
        if self.tie_word_embeddings:
            n += self.vocab_size * self.dim  # the tied head still multiplies every token's state
        return 6 * n + 12 * self.n_layers * self.n_heads * self.head_dim * seq_len

    def replace(self, **changes: object) -> ModelArgs:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return out

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> ModelArgs:
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return dataclasses.replace(PRESETS[name], **overrides)


_LLAMA31 = RopeScaling(factor=8.0)
_LLAMA32 = RopeScaling(factor=32.0)
_EOS_INSTRUCT = [128001, 128008, 128009]

PRESETS: dict[str, ModelArgs] = {
    # Llama 3 (April 2024): 8K context, no RoPE scaling.
    "llama3-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
                           ffn_dim_multiplier=1.3, max_seq_len=8192),
    "llama3-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                            ffn_dim_multiplier=1.3, max_seq_len=8192),
    # Llama 3.1 (July 2024): 128K context, scaled RoPE (factor 8).
    "llama3.1-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
                             ffn_dim_multiplier=1.3, max_seq_len=131072, rope_scaling=_LLAMA31,
                             eos_token_id=_EOS_INSTRUCT),
    "llama3.1-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3, max_seq_len=131072, rope_scaling=_LLAMA31,
                              eos_token_id=_EOS_INSTRUCT),
    "llama3.1-405b": ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, multiple_of=4096,
                               ffn_dim_multiplier=1.2, max_seq_len=131072, rope_scaling=_LLAMA31,
                               eos_token_id=_EOS_INSTRUCT),
    # Llama 3.2 text models (September 2024): tied embeddings, RoPE factor 32.
    "llama3.2-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=256,
                             ffn_dim_multiplier=1.5, max_seq_len=131072, rope_scaling=_LLAMA32,
                             tie_word_embeddings=True, eos_token_id=_EOS_INSTRUCT),
    "llama3.2-3b": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=256,
                             ffn_dim_multiplier=1.0, max_seq_len=131072, rope_scaling=_LLAMA32,
                             tie_word_embeddings=True, eos_token_id=_EOS_INSTRUCT),
    # Llama 3.3 (December 2024): the 3.1 70B architecture.
    "llama3.3-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                              ffn_dim_multiplier=1.3, max_seq_len=131072, rope_scaling=_LLAMA31,
                              eos_token_id=_EOS_INSTRUCT),
    # Tiny shapes for tests and laptops (full 128,256-token vocabulary, so the real tokenizer fits).
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32,
                      ffn_dim_multiplier=None, max_seq_len=2048,
                      rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=256)),
    "tiny-tied": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, multiple_of=32,
                           ffn_dim_multiplier=1.5, max_seq_len=2048, tie_word_embeddings=True,
                           rope_scaling=RopeScaling(factor=32.0, original_max_position_embeddings=256)),
    "tiny-nope": ModelArgs(dim=48, n_layers=2, n_heads=6, n_kv_heads=6, multiple_of=16,
                           ffn_dim_multiplier=None, max_seq_len=1024, vocab_size=1024),
}

# The RoPE scaling each published family uses, for checkpoints (Meta's params.json) that
# only say ``use_scaled_rope: true``.
FAMILY_ROPE_SCALING: dict[str, RopeScaling | None] = {
    name: args.rope_scaling for name, args in PRESETS.items() if not name.startswith("tiny")
}
