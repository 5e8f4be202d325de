"""Check a set of named tensors against ``ModelArgs`` and build a ``Transformer`` from them.

Shared by both layouts; names here are herd's (= Hugging Face's). The model is built on
the meta device, so no memory is spent on weights that are about to be replaced, and the
loaded tensors are assigned in place (``load_state_dict(assign=True)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from herd.checkpoint.errors import CheckpointError
from herd.model import ModelArgs, Transformer

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_MAX_LISTED = 8

# How each checkpoint format names the config fields an error message may cite.
HF_FIELDS = {
    "dim": "hidden_size",
    "vocab_size": "vocab_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "ffn_dim": "intermediate_size",
}

Shape = tuple[int, ...]


def unwrap(model: torch.nn.Module) -> Transformer:
    """The ``Transformer`` inside a ``torch.compile`` wrapper (whose names carry ``_orig_mod.``)."""
    inner = getattr(model, "_orig_mod", model)
    if not isinstance(inner, Transformer):
        raise TypeError(f"expected a herd Transformer, got {type(inner).__name__}")
    return inner


def empty_model(args: ModelArgs) -> Transformer:
    """A ``Transformer`` whose parameters live on the meta device (no storage)."""
    with torch.device("meta"):
        return Transformer(args)


def expected_shapes(args: ModelArgs) -> dict[str, Shape]:
    """Every tensor a checkpoint of ``args`` holds, by herd name (tied: no lm_head)."""
    shapes = {name: tuple(t.shape) for name, t in empty_model(args).state_dict().items()}
    if args.tie_word_embeddings:
        shapes.pop(LM_HEAD)
    return shapes


def _listing(names: list[str], display: Callable[[str], str]) -> str:
    shown = ", ".join(display(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _config_contradictions(
    args: ModelArgs, shapes: Mapping[str, Shape], fields: Mapping[str, str], display: Callable[[str], str]
) -> list[str]:
    """Config fields that the tensors' shapes contradict, as sentences."""
    f, hd = fields, args.head_dim
    probes = [
        (EMBED, 0, args.vocab_size, f"{f['vocab_size']}={args.vocab_size}"),
        (EMBED, 1, args.dim, f"{f['dim']}={args.dim}"),
        ("model.layers.0.self_attn.q_proj.weight", 0, args.n_heads * hd,
         f"{f['n_heads']}={args.n_heads} (x head_dim {hd} = {args.n_heads * hd} rows)"),
        ("model.layers.0.self_attn.k_proj.weight", 0, args.n_kv_heads * hd,
         f"{f['n_kv_heads']}={args.n_kv_heads} (x head_dim {hd} = {args.n_kv_heads * hd} rows)"),
        ("model.layers.0.mlp.gate_proj.weight", 0, args.ffn_dim, f"{f['ffn_dim']}={args.ffn_dim}"),
    ]
    found = []
    for name, axis, want, claim in probes:
        shape = shapes.get(name)
        if shape is not None and len(shape) == 2 and shape[axis] != want:
            found.append(f"it says {claim}, but {display(name)} has shape {shape}")
    layers = {int(m.group(1)) for n in shapes if (m := _LAYER.match(n))}
    if layers and max(layers) + 1 != args.n_layers:
        found.append(f"it says {f['n_layers']}={args.n_layers}, but the weights hold layers "
                     f"0..{max(layers)} ({max(layers) + 1} layers)")
    return found


def check_weights(
    args: ModelArgs,
    shapes: Mapping[str, Shape],
    *,
    source: str,
    fields: Mapping[str, str] = HF_FIELDS,
    display: Callable[[str], str] = str,
) -> None:
    """Raise a CheckpointError unless ``shapes`` (herd names) are exactly the tensors of ``args``.

    A config that the shapes contradict is reported first, naming the config field;
    then missing, unexpected and mis-shaped tensors, each by name. With tied embeddings
    an ``lm_head.weight`` is allowed (its equality to the embedding is checked on load).
    """
    contradictions = _config_contradictions(args, shapes, fields, display)
    if contradictions:
        raise CheckpointError(f"{source} contradicts the weights: " + "; ".join(contradictions))
    expected = expected_shapes(args)
    present = set(shapes) - ({LM_HEAD} if args.tie_word_embeddings else set())
    problems = []
    missing = sorted(set(expected) - present)
    if missing:
        hint = " (set tie_word_embeddings if the head is shared)" if missing == [LM_HEAD] else ""
        problems.append(f"missing tensor(s) {_listing(missing, display)}{hint}")
    unexpected = sorted(present - set(expected))
    if unexpected:
        problems.append(f"unexpected tensor(s) {_listing(unexpected, display)}")
    wrong = [n for n in sorted(present & set(expected)) if tuple(shapes[n]) != expected[n]]
    if args.tie_word_embeddings and LM_HEAD in shapes and tuple(shapes[LM_HEAD]) != expected[EMBED]:
        wrong.append(LM_HEAD)
    if wrong:
        want = {**expected, LM_HEAD: expected.get(LM_HEAD, expected[EMBED])}
        details = ", ".join(f"{display(n)}: expected {want[n]}, found {tuple(shapes[n])}"
                            for n in wrong[:_MAX_LISTED])
        problems.append(f"mis-shaped tensor(s) {details}")
    if problems:
        raise CheckpointError(f"the weights do not match {source}: " + "; ".join(problems))


def build_model(
    args: ModelArgs,
    tensors: Mapping[str, Tensor],
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    display: Callable[[str], str] = str,
) -> Transformer:
    """A ``Transformer`` holding ``tensors`` (already checked), cast to ``dtype`` on ``device``."""
    state = dict(tensors)
    if args.tie_word_embeddings:
        head = state.pop(LM_HEAD, None)
        if head is not None and not torch.equal(head, state[EMBED]):
            raise CheckpointError(
                f"tie_word_embeddings is set but {display(LM_HEAD)} differs from {display(EMBED)}"
            )
    state = {name: t.to(device=device, dtype=dtype) for name, t in state.items()}
    if args.tie_word_embeddings:
        state[LM_HEAD] = state[EMBED]
    model = empty_model(args)
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # one Parameter, as constructed
    return model.eval()
