"""Model averaging: weighted means, tied embeddings, architecture checks."""

from __future__ import annotations

import pytest
import torch

from herd.checkpoint import load_any, save_pretrained
from herd.posttrain.average import average_checkpoints
from tests.conftest import make_tiny_model


@pytest.mark.parametrize("preset", ["tiny-nope", "tiny-tied"])
def test_weighted_average_of_checkpoints(tmp_path, preset):
    models = [make_tiny_model(preset, seed=s) for s in range(3)]
    for i, m in enumerate(models):
        save_pretrained(m, tmp_path / f"m{i}")
    avg = average_checkpoints([tmp_path / f"m{i}" for i in range(3)], tmp_path / "avg", weights=[2, 1, 1])
    saved = load_any(tmp_path / "avg")
    states = [m.state_dict() for m in models]
    for name, tensor in saved.state_dict().items():
        want = 0.5 * states[0][name] + 0.25 * states[1][name] + 0.25 * states[2][name]
        torch.testing.assert_close(tensor, want, rtol=1e-6, atol=1e-7, msg=name)
    if models[0].args.tie_word_embeddings:
        assert saved.lm_head.weight is saved.model.embed_tokens.weight
    uniform = average_checkpoints([tmp_path / "m0", tmp_path / "m1"])
    torch.testing.assert_close(uniform.model.norm.weight, (states[0]["model.norm.weight"] +
                                                           states[1]["model.norm.weight"]) / 2)
    assert avg is not None


def test_average_refuses_other_architectures_and_bad_weights(tmp_path):
    save_pretrained(make_tiny_model("tiny-nope"), tmp_path / "a")
    save_pretrained(make_tiny_model("tiny-nope", n_layers=3), tmp_path / "b")
    with pytest.raises(ValueError, match="another architecture.*n_layers"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="weights"):
        average_checkpoints([tmp_path / "a", tmp_path / "a"], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        average_checkpoints([tmp_path / "a", tmp_path / "a"], weights=[-1.0, 0.5])
