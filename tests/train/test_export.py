"""The final model, exported in the native layout, loads in transformers with equal logits."""

from __future__ import annotations

import pytest
import torch

from herd.checkpoint import load_pretrained
from herd.model import ModelArgs, Transformer
from herd.train.loop import pretrain

from .helpers import tiny_config


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_exported_model_matches_transformers(tmp_path, preset):
    transformers = pytest.importorskip("transformers")
    result = pretrain(tiny_config(tmp_path / "run", model={"preset": preset}, train={"steps": 3},
                                  checkpoint={"export": True}))
    assert result.export_dir == tmp_path / "run/final"
    assert (result.export_dir / "config.json").exists()

    herd_model = load_pretrained(result.export_dir).eval()
    initial = Transformer(ModelArgs.from_name(preset))
    initial.init_weights(0.02, torch.Generator().manual_seed(0))
    assert not torch.equal(herd_model.model.layers[0].mlp.up_proj.weight,
                           initial.model.layers[0].mlp.up_proj.weight), "export holds the trained weights"

    hf = transformers.LlamaForCausalLM.from_pretrained(result.export_dir, torch_dtype=torch.float32).eval()
    tokens = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = herd_model(tokens)
        theirs = hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
