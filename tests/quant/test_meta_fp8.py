"""Meta's native FP8 layout (Llama 3.1 405B Instruct FP8 as ``llama model download`` gives it).

The model-parallel checkpoints here are written by this file's own writer, which follows
llama-models (``quantize_impls.quantize_fp8`` per rank slice, ``fp8_scales_{rank}.pt`` keyed
``"{layer}_feed_forward.{w}_{rank}"``), and herd's logits are checked against this file's own
emulation of the ranks' computation.
"""

from __future__ import annotations

import copy

import pytest
import torch

from herd.checkpoint import CheckpointError, load_any
from herd.checkpoint.meta import load_meta, save_meta
from herd.quant import Fp8RowwiseLinear, quantize
from herd.quant.meta_fp8 import is_meta_fp8, load_meta_fp8, save_meta_fp8
from tests.quant.helpers import small_model

E4M3_MAX = 448.0


def fbgemm_rows(x: torch.Tensor, ub: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """fbgemm's quantize_fp8_per_row, written out: e4m3 values and the dequantization scale per row."""
    m = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12)
    if ub is not None:
        m = m.clamp(max=ub)
    return (x.float() * (E4M3_MAX / m)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), m / E4M3_MAX


def write_meta_fp8(model, path, ranks: int, weights_as_bf16: bool = False) -> None:
    """bf16 shards by herd's Meta writer, then each rank's inner w1/w2/w3 slice quantized on its own."""
    save_meta(model, path, dtype=torch.bfloat16, model_parallel=ranks)
    n = model.args.n_layers
    for rank in range(ranks):
        shard = torch.load(path / f"consolidated.{rank:02d}.pth", weights_only=True)
        scales = {}
        for layer in range(1, n - 1):
            for w in ("w1", "w2", "w3"):
                name = f"layers.{layer}.feed_forward.{w}.weight"
                q, s = fbgemm_rows(shard[name])
                shard[name] = q.to(torch.bfloat16) if weights_as_bf16 else q
                scales[f"{layer}_feed_forward.{w}_{rank}"] = s.reshape(-1)
        torch.save(shard, path / f"consolidated.{rank:02d}.pth")
        torch.save(scales, path / f"fp8_scales_{rank}.pt")


class RankFfn(torch.nn.Module):
    """One FFN as ``ranks`` GPUs run it: w1/w3 slices by rows on the full input, w2 slices by
    columns on each rank's slice of the hidden state, the w2 outputs summed."""

    def __init__(self, path, layer: int, ranks: int) -> None:
        super().__init__()
        self.parts = []
        for rank in range(ranks):
            shard = torch.load(path / f"consolidated.{rank:02d}.pth", weights_only=True)
            sc = torch.load(path / f"fp8_scales_{rank}.pt", weights_only=True)
            self.parts.append({w: (shard[f"layers.{layer}.feed_forward.{w}.weight"].to(torch.float8_e4m3fn),
                                   sc[f"{layer}_feed_forward.{w}_{rank}"]) for w in ("w1", "w2", "w3")})

    @staticmethod
    def mm(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        xq, xs = fbgemm_rows(x, 1200.0)
        return ((xq.float() * xs) @ (q.float() * s[:, None]).t()).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = 0
        for p in self.parts:
            h = torch.nn.functional.silu(self.mm(x2, *p["w1"])) * self.mm(x2, *p["w3"])
            out = out + self.mm(h, *p["w2"])
        return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("ranks", [1, 2])
def test_loads_a_model_parallel_fp8_checkpoint_as_the_ranks_compute_it(tmp_path, ranks: int) -> None:
    model = small_model(n_layers=4, rope_scaling=None)
    write_meta_fp8(model, tmp_path, ranks)
    assert is_meta_fp8(tmp_path)
    loaded = load_any(tmp_path, dtype=torch.float32)
    fp8 = {n: m for n, m in loaded.named_modules() if isinstance(m, Fp8RowwiseLinear)}
    assert sorted(fp8) == sorted(f"model.layers.{i}.mlp.{p}" for i in (1, 2) for p in ("gate_proj", "up_proj",
                                                                                         "down_proj"))
    assert all(m.shards == (ranks if n.endswith("down_proj") else 1) for n, m in fp8.items())

    reference = load_meta(_plain_copy(tmp_path, model), dtype=torch.float32)
    for layer in (1, 2):
        reference.model.layers[layer].mlp = RankFfn(tmp_path, layer, ranks)
    tokens = torch.randint(0, model.args.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = loaded(tokens), reference(tokens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the FP8 model is close to the bf16 one it came from
        plain = model.float()(tokens)
    assert (got - plain).abs().max() < 0.05 * plain.abs().max()


def _plain_copy(path, model):
    """The same checkpoint without its FP8 parts (the reference keeps everything else)."""
    out = path.parent / f"{path.name}-plain"
    save_meta(model, out, dtype=torch.bfloat16)
    return out


def test_bf16_carrying_e4m3_values_loads_the_same(tmp_path) -> None:
    """llama-models reads the fp8 weights through a bf16 model: files may hold them either way."""
    model = small_model(n_layers=4, rope_scaling=None)
    write_meta_fp8(model, tmp_path / "f8", 2)
    write_meta_fp8(model, tmp_path / "bf", 2, weights_as_bf16=True)
    tokens = torch.randint(0, model.args.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(load_meta_fp8(tmp_path / "f8")(tokens), load_meta_fp8(tmp_path / "bf")(tokens))


@pytest.mark.parametrize("ranks", [1, 2])
def test_save_and_load_round_trip(tmp_path, ranks: int) -> None:
    model = quantize(small_model(n_layers=4, rope_scaling=None).to(torch.bfloat16), "fp8")
    save_meta_fp8(model, tmp_path / "out", model_parallel=ranks)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(["params.json"] + [f"consolidated.{r:02d}.pth" for r in range(ranks)]
                           + [f"fp8_scales_{r}.pt" for r in range(ranks)])
    scales = torch.load(tmp_path / "out" / f"fp8_scales_{ranks - 1}.pt", weights_only=True)
    assert sorted(scales) == sorted(f"{i}_feed_forward.{w}_{ranks - 1}" for i in (1, 2) for w in ("w1", "w2", "w3"))
    loaded = load_any(tmp_path / "out")
    for (name, a), b in zip(model.state_dict().items(), _state_of(loaded, ranks), strict=True):
        assert torch.equal(a.float(), b.float()), name
    tokens = torch.randint(0, model.args.vocab_size, (1, 16))
    with torch.no_grad():
        if ranks == 1:  # one rank: the same model, bit for bit
            assert torch.equal(model(tokens), loaded(tokens))
        again = tmp_path / "again"  # a model read from n ranks writes n ranks again, unchanged
        save_meta_fp8(loaded, again, model_parallel=ranks)
        assert torch.equal(load_any(again)(tokens), loaded(tokens))


def _state_of(loaded, ranks: int):
    """``loaded``'s tensors in the shapes of a one-rank model (w2 scale columns are equal copies)."""
    for name, t in loaded.state_dict().items():
        if name.endswith("down_proj.weight_scale") and ranks > 1:
            assert all(torch.equal(t[:, 0], t[:, r]) for r in range(ranks))
            t = t[:, :1]
        yield t


def test_errors_name_the_culprit(tmp_path) -> None:
    model = small_model(n_layers=4, rope_scaling=None)
    write_meta_fp8(model, tmp_path, 2)
    with pytest.raises(CheckpointError, match="FP8 layout"):
        load_meta(tmp_path)  # the plain loader would cast e4m3 codes to bf16 without their scales
    (tmp_path / "fp8_scales_1.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(CheckpointError, match="lacks fp8_scales_1.pt"):
        load_any(tmp_path)
    (tmp_path / "moved.pt").rename(tmp_path / "fp8_scales_1.pt")
    scales = torch.load(tmp_path / "fp8_scales_0.pt", weights_only=True)
    scales["1_feed_forward.w1_0"] = scales["1_feed_forward.w1_0"][:-1]
    torch.save(scales, tmp_path / "fp8_scales_0.pt")
    with pytest.raises(CheckpointError, match=r"fp8_scales_0.pt: 1_feed_forward.w1_0 has \d+ scales for \d+ rows"):
        load_any(tmp_path)
    (tmp_path / "fp8_scales_0.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="corrupt or truncated scales file"):
        load_any(tmp_path)


def test_save_refuses_what_the_layout_cannot_hold(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no FP8 layers"):
        save_meta_fp8(small_model(n_layers=4, rope_scaling=None), tmp_path / "a")
    model = quantize(small_model(n_layers=4, rope_scaling=None), "fp8")
    attn = model.model.layers[1].self_attn
    attn.o_proj = Fp8RowwiseLinear.from_linear(torch.nn.Linear(attn.o_proj.in_features, attn.o_proj.out_features,
                                                               bias=False))
    with pytest.raises(CheckpointError, match="not a feed-forward projection"):
        save_meta_fp8(model, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_sharded_fp8_linear_is_the_sum_of_its_slices() -> None:
    torch.manual_seed(0)
    w, x = torch.randn(24, 64), torch.randn(5, 64) * 3
    halves = [Fp8RowwiseLinear.from_quantized(*fbgemm_rows(part)) for part in w.chunk(2, dim=1)]
    q = torch.cat([h.weight for h in halves], dim=1)
    s = torch.cat([h.weight_scale for h in halves], dim=1)
    sharded = Fp8RowwiseLinear.from_quantized(q, s, shards=2)
    assert torch.equal(sharded(x), halves[0](x[:, :32]) + halves[1](x[:, 32:]))
    torch.testing.assert_close(sharded.dequantize(), torch.cat([h.dequantize() for h in halves], dim=1))
    with pytest.raises(ValueError, match="needs 48 scales"):
        Fp8RowwiseLinear.from_quantized(q, s[:, :1], shards=2)
    assert copy.deepcopy(sharded).shards == 2
