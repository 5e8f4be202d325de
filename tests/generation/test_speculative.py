"""Speculative decoding keeps the target's outputs: greedy token for token, a self-draft
accepts everything, and sampled sequences follow the target's own distribution (a
chi-square test against the exact probabilities from full forward passes, and against
plain sampling with the Generator)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from herd.generation import Generator, SamplingParams
from herd.generation.sampling import sampling_probs
from herd.generation.speculative import SpeculativeGenerator
from tests.conftest import make_tiny_model

VOCAB = 2048


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def target():
    return make_tiny_model("tiny", seed=0, vocab_size=VOCAB)


def _prompt(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [1] + torch.randint(0, VOCAB, (n - 1,), generator=g).tolist()


def _near_copy(model, noise, seed=7):
    """A draft that agrees with the target part of the time: its LM head perturbed."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = draft.lm_head.weight
        w += noise * w.std() * torch.randn(w.shape, generator=g)
    return draft


@pytest.mark.parametrize("k", [1, 5])
def test_greedy_equals_plain_greedy_with_an_unrelated_draft(target, k):
    draft = make_tiny_model("tiny-tied", seed=3, vocab_size=VOCAB)
    params = SamplingParams(temperature=0, stop_token_ids=(), max_new_tokens=30)
    for seed, n in ((0, 9), (1, 1)):
        prompt = _prompt(n, seed)
        want = Generator(target).generate([prompt], params)[0]
        got = SpeculativeGenerator(target, draft, k=k).generate(prompt, params)
        assert got.completion.token_ids == want.token_ids
        assert got.completion.finish_reason == "length"
        assert got.target_passes < 30 or got.acceptance_rate == 0


def test_greedy_with_a_near_draft_accepts_some_and_stays_exact(target):
    params = SamplingParams(temperature=0, stop_token_ids=(), max_new_tokens=40, logprobs=2)
    prompt = _prompt(6, 4)
    want = Generator(target).generate([prompt], params)[0]
    got = SpeculativeGenerator(target, _near_copy(target, 0.6), k=4).generate(prompt, params)
    assert got.completion.token_ids == want.token_ids
    assert 0 < got.acceptance_rate < 1
    assert got.target_passes < 40  # several tokens per target pass
    for a, b in zip(got.completion.logprobs, want.logprobs, strict=True):
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_the_target_as_its_own_draft_accepts_everything(target):
    for params in (SamplingParams(temperature=0, stop_token_ids=(), max_new_tokens=25),
                   SamplingParams(temperature=1.0, top_p=1.0, seed=3, stop_token_ids=(), max_new_tokens=25)):
        got = SpeculativeGenerator(target, target, k=4).generate(_prompt(5, 2), params)
        assert got.acceptance_rate == 1.0
        assert got.accepted == got.proposed == 20  # 5 rounds of 4 drafts + 1 bonus token each
        assert got.target_passes == 5


def test_bf16_greedy_equals_plain_greedy_token_for_token():
    """In bf16 the verify pass (k+1 tokens in one forward) used to round differently from
    one-token steps and flip near-ties (4 of these 12 prompts parted from plain greedy);
    attention one query at a time keeps every token's logits bit-identical, so greedy output
    is still exactly the target's own."""
    model = make_tiny_model("tiny", seed=3).to(torch.bfloat16)  # the full vocabulary: many near-ties
    params = SamplingParams(temperature=0, max_new_tokens=40, stop_token_ids=())
    plain, spec = Generator(model), SpeculativeGenerator(model, model, k=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        prompt = torch.randint(0, 1000, (12,), generator=g).tolist()
        out = spec.generate(prompt, params)
        assert out.completion.token_ids == plain.generate([prompt], params)[0].token_ids
        assert out.acceptance_rate == 1.0


def test_stop_tokens_end_the_output_inside_an_accepted_run(target):
    params = SamplingParams(temperature=0, stop_token_ids=(), max_new_tokens=20)
    free = Generator(target).generate([_prompt(4)], params)[0].token_ids
    stop = free[6]
    cut = free[: free.index(stop)]
    got = SpeculativeGenerator(target, target, k=4).generate(
        _prompt(4), SamplingParams(temperature=0, stop_token_ids=(stop,), max_new_tokens=20))
    assert got.completion.token_ids == cut and got.completion.stop_token == stop


def test_unsupported_params_and_vocabularies_are_refused(target):
    with pytest.raises(ValueError, match="repetition_penalty"):
        SpeculativeGenerator(target, target).generate([1, 2], SamplingParams(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="vocabulary"):
        SpeculativeGenerator(target, make_tiny_model("tiny-nope"))


def _chi2_sf(stat: float, dof: int) -> float:
    """P(chi2_dof >= stat): the regularized upper incomplete gamma function."""
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def _exact_sequence_probs(model, prompt, params, n_tokens):
    """P(t_1..t_n) under plain sampling from ``model``, from full forward passes (no cache)."""
    probs = {(): 1.0}
    for _ in range(n_tokens):
        nxt = {}
        for prefix, p in probs.items():
            with torch.no_grad():
                logits = model(torch.tensor([prompt + list(prefix)]))[0, -1:]
            row = sampling_probs(logits, params)[0]
            for t in row.nonzero()[:, 0].tolist():
                nxt[prefix + (t,)] = p * float(row[t])
        probs = nxt
    return probs


@pytest.mark.parametrize("n", [600, pytest.param(4000, marks=pytest.mark.slow)])
def test_sampled_sequences_follow_the_target_distribution_chi_square(target, n):
    params = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, stop_token_ids=(), max_new_tokens=2)
    prompt = _prompt(5, 9)
    draft = _near_copy(target, 1.0, seed=11)
    exact = _exact_sequence_probs(target, prompt, params, 2)
    draft_exact = _exact_sequence_probs(draft, prompt, params, 2)
    outcomes = sorted(set(exact) | set(draft_exact))
    # The test has power: sampling the draft's distribution instead would be rejected.
    p = torch.tensor([exact.get(o, 0.0) for o in outcomes], dtype=torch.float64)
    q = torch.tensor([draft_exact.get(o, 0.0) for o in outcomes], dtype=torch.float64)
    assert n * float(((q - p) ** 2 / p.clamp(min=1e-12)).sum()) > 60

    spec = SpeculativeGenerator(target, draft, k=2)
    counts = dict.fromkeys(outcomes, 0)
    proposed = accepted = 0
    for i in range(n):
        got = spec.generate(prompt, dataclasses.replace(params, seed=1000 + i))
        counts[tuple(got.completion.token_ids)] += 1
        proposed, accepted = proposed + got.proposed, accepted + got.accepted
    assert 0.2 < accepted / proposed < 0.95  # both the accept and the residual paths ran
    support = [o for o in outcomes if exact.get(o, 0) > 0]
    assert sum(counts[o] for o in outcomes if o not in support) == 0  # nothing the target cannot sample
    observed = torch.tensor([counts[o] for o in support], dtype=torch.float64)
    expected = n * torch.tensor([exact[o] for o in support], dtype=torch.float64)
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert _chi2_sf(stat, len(support) - 1) > 1e-3, (stat, len(support))

    # Two-sample: the same count of plain draws from the Generator (seed + row).
    plain = Generator(target).generate([prompt] * n, dataclasses.replace(params, seed=5))
    plain_counts = dict.fromkeys(support, 0)
    for c in plain:
        plain_counts[tuple(c.token_ids)] += 1
    table = torch.tensor([[counts[o], plain_counts[o]] for o in support], dtype=torch.float64)
    table = table[table.sum(1) > 0]
    exp2 = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat2 = float(((table - exp2) ** 2 / exp2).sum())
    assert _chi2_sf(stat2, table.shape[0] - 1) > 1e-3, stat2


def test_chi_square_helper_matches_known_quantiles():
    # chi2(1) 95th percentile 3.841, chi2(10) 99th 23.209 (standard tables)
    assert _chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-3)
    assert _chi2_sf(23.209, 10) == pytest.approx(0.01, abs=1e-3)


def test_sampling_probs_is_the_distribution_pick_draws_from():
    from herd.generation.sampling import SequenceState, pick

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, 0.9, 1.7, -3.0]])
    params = SamplingParams(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05, stop_token_ids=())
    probs = sampling_probs(logits, params)[0].double()
    assert probs.sum().item() == pytest.approx(1.0) and (probs == 0).sum() >= 2  # truncation happened
    n = 4000
    seqs = [SequenceState([1], dataclasses.replace(params, seed=i)) for i in range(n)]
    tokens = pick(logits.expand(n, -1), seqs).tokens
    counts = torch.bincount(tokens, minlength=8).double()
    assert counts[probs == 0].sum() == 0
    keep = probs > 0
    stat = float(((counts[keep] - n * probs[keep]) ** 2 / (n * probs[keep])).sum())
    assert _chi2_sf(stat, int(keep.sum()) - 1) > 1e-3
    greedy = sampling_probs(logits, SamplingParams(temperature=0))[0]
    assert greedy.tolist() == [1.0] + [0.0] * 7
