"""Generation on CUDA: the Generator eager and compiled (CUDA graphs over the static
cache), speculative decoding and the paged engine give transformers' greedy tokens on
the GPU (fp32, TF32 off, so that only kernel order separates them).

Skipped without a GPU; the CPU suite covers the same logic on the CPU.
"""

from __future__ import annotations

import pytest
import torch

from herd.engine import Engine
from herd.generation import Generator, SamplingParams
from herd.generation.speculative import SpeculativeGenerator
from tests.conftest import make_tiny_model
from tests.generation.conftest import hf_twin

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GREEDY = dict(temperature=0, stop_token_ids=())


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[128000] + torch.randint(0, 128000, (n - 1,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def pair():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = make_tiny_model("tiny", seed=3)
    hf = hf_twin(model).cuda()
    return model.cuda(), hf


def _hf_greedy(hf, prompt, n):
    ids = torch.tensor([prompt], device="cuda")
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@cuda
@pytest.mark.parametrize("compile", [False, True])
def test_generator_on_cuda_matches_transformers(pair, compile):
    model, hf = pair
    prompts = _prompts([9, 40, 23], seed=1)
    gen = Generator(model, compile=compile)
    got = [c.token_ids for c in gen.generate(prompts, SamplingParams(max_new_tokens=20, **GREEDY))]
    assert got == [_hf_greedy(hf, p, 20) for p in prompts]
    # a second batch of another size reuses the compiled step (new graph) and still agrees
    again = gen.generate(prompts[:1], SamplingParams(max_new_tokens=20, **GREEDY))[0].token_ids
    assert again == got[0]


@cuda
def test_engine_and_speculative_on_cuda_match_the_generator(pair):
    model, _ = pair
    prompts = _prompts([5, 33, 17, 60], seed=2)
    params = SamplingParams(max_new_tokens=16, **GREEDY)
    want = [c.token_ids for c in Generator(model).generate(prompts, params)]
    engine = Engine(model, num_blocks=64, block_size=16, max_batched_tokens=64)
    assert [c.token_ids for c in engine.generate(prompts, params)] == want
    assert engine.blocks.num_used == 0
    draft = make_tiny_model("tiny", seed=3, n_layers=1).cuda()
    spec = SpeculativeGenerator(model, draft, k=3).generate(prompts[1], params)
    assert spec.completion.token_ids == want[1]


@cuda
def test_seeded_sampling_on_cuda_is_reproducible(pair):
    model, _ = pair
    gen = Generator(model)
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7, stop_token_ids=())
    a = gen.generate(_prompts([8]), params)[0].token_ids
    b = gen.generate(_prompts([8]), params)[0].token_ids
    assert a == b
