"""Generation: sampling, the preallocated KV cache, the batched generator, speculative decoding."""

from herd.generation.generator import Generator, TextStream
from herd.generation.kv_cache import KVCache
from herd.generation.sampling import (
    Completion,
    SamplingParams,
    SequenceState,
    TextDecoder,
    TokenLogprob,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    sample,
)
from herd.generation.speculative import SpeculativeCompletion, SpeculativeGenerator

__all__ = [
    "Completion",
    "Generator",
    "KVCache",
    "SamplingParams",
    "SequenceState",
    "SpeculativeCompletion",
    "SpeculativeGenerator",
    "TextDecoder",
    "TextStream",
    "TokenLogprob",
    "apply_min_p",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "sample",
]
