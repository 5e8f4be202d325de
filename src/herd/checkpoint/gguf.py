"""GGUF export: a herd model as a llama.cpp / Ollama ``llama`` GGUF file, F16 or Q8_0.

Written with the ``gguf`` package (llama.cpp's own writer), the way llama.cpp's
``convert_hf_to_gguf.py`` writes a Llama 3 model:

- tensors under GGUF names (``token_embd``, ``blk.N.attn_q`` …), q/k rows permuted from
  HF's rotate-half layout to the interleaved pairs llama.cpp's RoPE rotates; norms stay
  F32; 2-D weights F16 or Q8_0 (Q8_0 where the row length is a multiple of 32);
- Llama 3.1 RoPE scaling as the ``rope_freqs`` tensor of per-frequency divisors;
- the tokenizer: ``gpt2`` BPE with the ``llama-bpe`` pre-tokenizer, every token spelled in
  GPT-2's byte alphabet, the merges, token types (special tokens CONTROL, ids past the
  tokenizer UNUSED), bos/eos/eot/eom ids and the chat template.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.checkpoint.errors import CheckpointError
from herd.checkpoint.meta import half_to_interleaved
from herd.checkpoint.weights import unwrap
from herd.model import ModelArgs

FILE_TYPES = ("f16", "q8_0")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of a herd (HF) tensor name, None for names GGUF has no slot for."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES[parts[3]]}"
    return None


def rope_factors(args: ModelArgs) -> np.ndarray | None:
    """Llama 3.1's per-frequency RoPE divisors (llama.cpp divides each frequency by its
    factor), or None without scaling: 1 for short wavelengths, ``factor`` for long
    ones, a smooth blend between."""
    s = args.rope_scaling
    if s is None:
        return None
    dim = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            out.append(1.0 / ((1 - smooth) / s.factor + smooth))
    return np.asarray(out, dtype=np.float32)


def vocab_entries(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for ``vocab_size`` ids, as convert_hf_to_gguf spells them."""
    import gguf

    from herd.tokenizer.hf_files import merges_from_ranks, token_to_str

    if tokenizer.n_words > vocab_size:
        raise CheckpointError(f"the tokenizer has {tokenizer.n_words} ids but the model only {vocab_size} "
                              "embedding rows")
    spelled = {rank: token_to_str(token) for token, rank in tokenizer.mergeable_ranks.items()}
    specials = {i: name for name, i in tokenizer.special_tokens.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in spelled:
            tokens.append(spelled[i])
            types.append(int(gguf.TokenType.NORMAL))
        elif i in specials:
            tokens.append(specials[i])
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    merges = [f"{spelled[a]} {spelled[b]}" for a, b in merges_from_ranks(tokenizer.mergeable_ranks)]
    return tokens, types, merges


def _eos_ids(args: ModelArgs, tokenizer: Any) -> tuple[int, list[int]]:
    """(eos id, the config's stop ids that are the tokenizer's special tokens): an instruct
    model (whose eos list holds <|eot_id|>) ends a turn with <|eot_id|>, as its
    tokenizer_config's eos_token says; otherwise the config's first eos id, or the
    tokenizer's <|end_of_text|> when the config names no special token of this tokenizer."""
    ids = args.eos_token_id if isinstance(args.eos_token_id, list) else [args.eos_token_id]
    stops = [i for i in ids if tokenizer.is_special(i)]
    if tokenizer.eot_id in stops:
        return tokenizer.eot_id, stops
    return (stops[0] if stops else tokenizer.eos_id), stops


def _tensor(writer: Any, name: str, t: torch.Tensor, file_type: str) -> None:
    import gguf

    data = t.detach().to(device="cpu", dtype=torch.float32).numpy()
    if data.ndim == 1:
        writer.add_tensor(name, data)  # norms and rope_freqs stay F32, as llama.cpp keeps them
    elif file_type == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def export_gguf(model: torch.nn.Module, path: str | os.PathLike, tokenizer: Any, *, file_type: str = "f16",
                chat_template: str | None = None, name: str | None = None) -> Path:
    """Write ``model`` (a herd ``Transformer``, not quantized) with ``tokenizer`` (a herd
    ``Tokenizer``) as a GGUF file; ``file_type`` f16 or q8_0. ``chat_template`` defaults
    to herd's Llama 3.x template. Written to a temporary name, then renamed."""
    import gguf

    from herd.tokenizer.chat_template import CHAT_TEMPLATE

    file_type = file_type.lower()
    if file_type not in FILE_TYPES:
        raise CheckpointError(f"GGUF file type {file_type!r} is not supported; use one of {', '.join(FILE_TYPES)}")
    if getattr(model, "quant_scheme", None) is not None:
        raise CheckpointError("export a GGUF from the unquantized model: GGUF quantizes on its own (--type q8_0)")
    model = unwrap(model)
    args: ModelArgs = model.args
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(name or path.stem)
        writer.add_context_length(args.max_seq_len)
        writer.add_embedding_length(args.dim)
        writer.add_block_count(args.n_layers)
        writer.add_feed_forward_length(args.ffn_dim)
        writer.add_head_count(args.n_heads)
        writer.add_head_count_kv(args.n_kv_heads)
        writer.add_rope_freq_base(float(args.rope_theta))
        writer.add_layer_norm_rms_eps(float(args.norm_eps))
        writer.add_rope_dimension_count(args.head_dim)
        if args.head_dim != args.dim // args.n_heads:
            writer.add_key_length(args.head_dim)
            writer.add_value_length(args.head_dim)
        writer.add_vocab_size(args.vocab_size)
        ft = gguf.LlamaFileType.MOSTLY_Q8_0 if file_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
        writer.add_file_type(int(ft))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        tokens, types, merges = vocab_entries(tokenizer, args.vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("llama-bpe")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        eos, stops = _eos_ids(args, tokenizer)
        writer.add_bos_token_id(tokenizer.bos_id)
        writer.add_eos_token_id(eos)
        if tokenizer.eot_id in stops or eos == tokenizer.eot_id:
            writer.add_eot_token_id(tokenizer.eot_id)
        if tokenizer.eom_id in stops:
            writer.add_eom_token_id(tokenizer.eom_id)
        writer.add_pad_token_id(tokenizer.pad_id)
        writer.add_add_bos_token(True)
        writer.add_chat_template(chat_template or CHAT_TEMPLATE)

        factors = rope_factors(args)
        if factors is not None:
            writer.add_tensor("rope_freqs.weight", factors)
        for hf_name, t in model.state_dict().items():
            target = gguf_name(hf_name)
            if target is None:
                raise CheckpointError(f"tensor {hf_name} has no GGUF name")
            if hf_name == "lm_head.weight" and args.tie_word_embeddings:
                continue  # llama.cpp reuses token_embd when output.weight is absent
            if hf_name.endswith("q_proj.weight"):
                t = half_to_interleaved(t, args.n_heads)
            elif hf_name.endswith("k_proj.weight"):
                t = half_to_interleaved(t, args.n_kv_heads)
            _tensor(writer, target, t, file_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def chat_template_of(model_dir: str | os.PathLike) -> str | None:
    """The chat template a checkpoint's tokenizer_config.json carries, if any."""
    config = Path(model_dir) / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        template = json.loads(config.read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None
