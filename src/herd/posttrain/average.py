"""Model averaging: the weighted mean of checkpoints of one architecture (Llama 3 averages
the models of each post-training stage, across data and hyper-parameter variants).

    average_checkpoints(["runs/a/final", "runs/b/final"], "runs/avg", weights=[0.7, 0.3])

Checkpoints are read one at a time (either layout) and summed in fp32, so memory holds
two models at most. Their architectures must agree exactly (the ``ModelArgs``); the
weights are normalised to sum to 1 (uniform when not given). The tokenizer of the first
checkpoint is saved with the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from herd.model import Transformer


def average_checkpoints(paths: Sequence[str | Path], out_dir: str | Path | None = None, *,
                        weights: Sequence[float] | None = None, dtype: torch.dtype | str | None = None) -> Transformer:
    """The weighted average of ``paths``; saved to ``out_dir`` (HF layout) when given."""
    from herd.checkpoint import load_any
    from herd.checkpoint.tokenizer_files import load_tokenizer
    from herd.train.averaging import normalised_weights

    weights = normalised_weights(weights, len(paths))
    average: Transformer | None = None
    saved_dtype = None
    for path, w in zip(paths, weights, strict=True):
        model = load_any(path)
        if average is None:
            saved_dtype = model.model.embed_tokens.weight.dtype
            average, first = model.float(), Path(path)
            with torch.no_grad():
                for p in average.parameters():  # tied tensors once
                    p.mul_(w)
            continue
        if model.args.to_dict() != average.args.to_dict():
            diff = {k: (v, model.args.to_dict()[k]) for k, v in average.args.to_dict().items()
                    if model.args.to_dict()[k] != v}
            raise ValueError(f"{path} has another architecture than {first}: {diff}")
        with torch.no_grad():
            theirs = dict(model.named_parameters())
            for name, p in average.named_parameters():
                p.add_(theirs[name].float(), alpha=w)
    assert average is not None
    if out_dir is not None:
        from herd.checkpoint import save_pretrained

        save_pretrained(average, out_dir, tokenizer=load_tokenizer(first), dtype=dtype or saved_dtype)
    return average
