"""The Llama 3.x model family."""

from herd.model.args import PRESETS, ModelArgs, RopeScaling
from herd.model.attention import (
    CAUSAL,
    AttentionBackend,
    CausalAttention,
    DocumentMaskedAttention,
    positions_from_document_ids,
)
from herd.model.transformer import Transformer, rope_inv_freq

__all__ = [
    "CAUSAL",
    "PRESETS",
    "AttentionBackend",
    "CausalAttention",
    "DocumentMaskedAttention",
    "ModelArgs",
    "RopeScaling",
    "Transformer",
    "positions_from_document_ids",
    "rope_inv_freq",
]
