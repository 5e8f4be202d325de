"""Sampling: parameter validation, truncation supports against a plain reference, the
repetition penalty against transformers, seeding, logprobs, processors, stop conditions."""

from __future__ import annotations

import math

import pytest
import torch

from herd.generation import (
    SamplingParams,
    SequenceState,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    sample,
)
from herd.generation.sampling import TextDecoder, text_decoder

V = 500


def _logits(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, V, generator=torch.Generator().manual_seed(seed)) * 3


def _support(x: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in x]


# ------------------------------------------------------------------ params


@pytest.mark.parametrize(
    "field, value",
    [("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0), ("top_p", 1.5),
     ("top_k", -1), ("top_k", 2.5), ("min_p", 1.2), ("repetition_penalty", 0.0), ("seed", "7"),
     ("max_new_tokens", 0), ("stop_token_ids", [-1]), ("stop", [""]), ("logprobs", -1),
     ("logits_processors", [42])],
)
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field} must be"):
        SamplingParams(**{field: value})


def test_params_accept_lists_and_a_single_stop_string():
    p = SamplingParams(stop="###", stop_token_ids=[1, 2], logits_processors=[lambda ids, x: x])
    assert p.stop == ("###",) and p.stop_token_ids == (1, 2) and len(p.logits_processors) == 1
    assert SamplingParams(temperature=0).greedy and not SamplingParams().greedy


# ------------------------------------------------------------------ truncation supports


def test_top_k_keeps_the_k_largest_per_row():
    x = _logits()
    k = torch.tensor([1, 7, 0, 600])  # 0 = off; k > vocab keeps everything
    got = _support(apply_top_k(x, k))
    for row, kk, s in zip(x, k.tolist(), got, strict=True):
        want = set(range(V)) if kk in (0, 600) else set(row.argsort(descending=True)[:kk].tolist())
        assert s == want


@pytest.mark.parametrize("candidates", [1024, 10])  # whole-vocabulary sort; top-10 first
def test_top_p_keeps_the_smallest_prefix_reaching_p(candidates):
    x = _logits()
    x[1, :8] += 12  # a peaked row: its top 10 hold more than 0.9 of the mass
    p = torch.tensor([0.5, 0.9, 1.0, 0.01])
    got = _support(apply_top_p(x, p, candidates=candidates))
    for row, pp, s in zip(x, p.tolist(), got, strict=True):
        probs = row.double().softmax(-1).tolist()
        order = sorted(range(V), key=lambda j: -probs[j])
        want, mass = set(), 0.0
        for j in order:  # take tokens, most likely first, until the mass reaches p
            want.add(j)
            mass += probs[j]
            if mass >= pp:
                break
        assert s == want, (pp, len(s), len(want))
    assert len(got[3]) == 1 and len(got[2]) == V


def test_top_p_stops_at_the_token_that_reaches_p():
    x = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()  # exact binary fractions
    assert _support(apply_top_p(x, torch.tensor([0.5]))) == [{0}]  # 0.5 alone reaches p = 0.5
    assert _support(apply_top_p(x, torch.tensor([0.75]))) == [{0, 1}]
    assert _support(apply_top_p(x, torch.tensor([0.76]))) == [{0, 1, 2}]


def test_min_p_keeps_tokens_above_a_fraction_of_the_top():
    x = _logits()
    m = torch.tensor([0.0, 0.05, 0.3, 1.0])
    got = _support(apply_min_p(x, m))
    for row, mm, s in zip(x, m.tolist(), got, strict=True):
        probs = row.softmax(-1)
        want = {j for j in range(V) if probs[j] >= mm * probs.max()}
        assert s == want
    assert len(got[0]) == V and len(got[3]) == 1 and 1 < len(got[1]) < V


def test_draws_follow_the_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.2] + [0.0] * (V - 3)])
    seq = SequenceState([1], SamplingParams(temperature=1.0, top_p=1.0, seed=3, max_new_tokens=10_000))
    draws = [sample(probs.log(), [seq])[0][0] for _ in range(3000)]
    counts = torch.bincount(torch.tensor(draws), minlength=V)
    assert counts[3:].sum() == 0
    assert (counts[:3] / 3000).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.035)


def test_sampled_tokens_stay_inside_top_k():
    logits = _logits(1)
    top3 = set(logits[0].topk(3).indices.tolist())
    seq = SequenceState([1], SamplingParams(temperature=5.0, top_p=1.0, top_k=3, seed=0, max_new_tokens=1000))
    drawn = {sample(logits, [seq])[0][0] for _ in range(200)}
    assert drawn == top3  # high temperature: all three show up, nothing else does


def test_repetition_penalty_matches_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    x = _logits(2)
    history = [[3, 17, 17, 250, 499], [0, 1, 2]]
    penalty = [1.3, 0.7]
    seen = torch.zeros(2, V, dtype=torch.bool)
    for i, h in enumerate(history):
        seen[i, h] = True
    got = apply_repetition_penalty(x, seen, torch.tensor(penalty))
    for i in range(2):
        want = RepetitionPenaltyLogitsProcessor(penalty[i])(torch.tensor([history[i]]), x[i:i + 1].clone())
        torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=0)


def test_repetition_penalty_over_prompt_and_output_changes_the_greedy_choice():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    x = torch.zeros(1, V)
    x[0, 10], x[0, 11], x[0, 12], x[0, 13] = 4.0, 3.5, 3.2, 3.0
    seq = SequenceState([10], SamplingParams(temperature=0, repetition_penalty=1.5, max_new_tokens=5))
    steps = []
    for _ in range(3):
        token = sample(x, [seq])[0][0]
        history = torch.tensor([seq.prompt_ids + seq.output_ids])
        want = RepetitionPenaltyLogitsProcessor(1.5)(history, x.clone()).argmax().item()
        assert token == want
        seq.append(token)
        steps.append(token)
    assert steps == [11, 12, 13]  # 10 (prompt) and each output token are penalized in turn


# ------------------------------------------------------------------ seeding, greedy, logprobs


def _draw(seed: int | None, n: int = 40, **kw) -> list[int]:
    logits = _logits(1, seed=5)
    seq = SequenceState([1], SamplingParams(temperature=1.0, top_p=1.0, seed=seed, max_new_tokens=n, **kw))
    return [sample(logits, [seq])[0][0] for _ in range(n)]


def test_seeded_sampling_is_reproducible():
    assert _draw(7) == _draw(7)
    assert _draw(7) != _draw(8)
    assert len(set(_draw(7))) > 5  # really sampling, not the arg-max every time


def test_temperature_zero_is_greedy_whatever_the_truncation():
    x = _logits()
    seqs = [SequenceState([1], SamplingParams(temperature=0, top_k=5, top_p=0.3, min_p=0.2, seed=i))
            for i in range(4)]
    assert sample(x, seqs)[0] == x.argmax(-1).tolist()


def test_mixed_batch_greedy_and_sampled_rows():
    x = _logits(2)
    seqs = [SequenceState([1], SamplingParams(temperature=0)),
            SequenceState([1], SamplingParams(temperature=1.0, top_k=1, seed=0))]
    assert sample(x, seqs)[0] == x.argmax(-1).tolist()  # top_k=1 leaves only the arg-max


def test_logprobs_are_the_models_distribution():
    x = _logits(2)
    seqs = [SequenceState([1], SamplingParams(temperature=2.0, top_k=3, seed=1, logprobs=4)),
            SequenceState([1], SamplingParams(temperature=0, logprobs=None))]
    tokens, logprobs = sample(x, seqs)
    ref = x[0].double().log_softmax(-1)
    lp = logprobs[0]
    assert lp.token_id == tokens[0] and math.isclose(lp.logprob, ref[tokens[0]].item(), abs_tol=1e-5)
    want_top = ref.topk(4)
    assert [t for t, _ in lp.top] == want_top.indices.tolist()
    assert [v for _, v in lp.top] == pytest.approx(want_top.values.tolist(), abs=1e-5)
    assert logprobs[1] is None


def test_logits_processor_can_force_a_token():
    seen_lengths = []

    def force_42(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        seen_lengths.append(len(generated))
        out = torch.full_like(logits, -math.inf)
        out[42] = 0.0
        return out

    seq = SequenceState([1, 2, 3], SamplingParams(temperature=1.0, seed=0, logits_processors=[force_42],
                                                  max_new_tokens=3, logprobs=0))
    for _ in range(3):
        tokens, logprobs = sample(_logits(1), [seq])
        assert tokens == [42]
        seq.append(tokens[0], logprobs[0])
    assert seen_lengths == [0, 1, 2]  # the processor sees the tokens generated so far
    # logprobs stay the model's own, not the forced distribution's
    assert seq.logprobs[0].logprob == pytest.approx(_logits(1)[0].log_softmax(-1)[42].item(), abs=1e-5)


# ------------------------------------------------------------------ stop conditions and text


def _feed(seq: SequenceState, ids: list[int]) -> list[str]:
    deltas = []
    for t in ids:
        done = seq.append(t)
        deltas.append(seq.take_delta())
        if done:
            break
    return deltas


def test_stop_tokens_report_which_one(tok):
    for stop_id, reason in ((tok.eom_id, "end_of_message"), (tok.eot_id, "end_of_turn")):
        seq = SequenceState([1], SamplingParams(), stop_token_ids=tok.stop_tokens, decoder=text_decoder(tok),
                            eom_id=tok.eom_id)
        _feed(seq, tok.encode("Call the tool") + [stop_id, 11])
        c = seq.completion()
        assert c.finish_reason == "stop" and c.stop_token == stop_id and c.stop_reason == reason
        assert c.token_ids == tok.encode("Call the tool") and c.text == "Call the tool"


def test_max_new_tokens_finishes_with_length(tok):
    seq = SequenceState([1], SamplingParams(max_new_tokens=3), decoder=text_decoder(tok))
    _feed(seq, tok.encode("one two three four five"))
    c = seq.completion()
    assert c.finish_reason == "length" and c.stop_reason == "out_of_tokens" and len(c.token_ids) == 3
    assert c.text == tok.decode(c.token_ids)


def test_stop_string_spanning_tokens_is_cut_and_never_streamed(tok):
    text = "The answer is 42.\n###\nIgnored tail"
    ids = tok.encode(text)
    stop = "42.\n##"
    # the stop string really spans several tokens
    starts = [len(tok.decode(ids[:i])) for i in range(len(ids) + 1)]
    first = text.index(stop)
    assert sum(first < s < first + len(stop) for s in starts) >= 2
    seq = SequenceState([1], SamplingParams(stop=[stop, "never"]), decoder=text_decoder(tok))
    deltas = _feed(seq, ids)
    c = seq.completion()
    assert c.finish_reason == "stop" and c.stop == stop and c.stop_token is None
    assert c.text == "The answer is "
    assert "".join(deltas) == c.text and not any("4" in d for d in deltas)
    assert len(c.token_ids) < len(ids)  # generation ended at the token completing the match


def test_streamed_deltas_never_split_a_character(tok):
    text = "Llama 🦙 says 你好, naïve café"
    ids = tok.encode(text)
    assert any(_invalid_utf8(tok.decode_token_bytes(i)) for i in ids)  # some tokens hold partial chars
    for decoder in (text_decoder(tok), TextDecoder(tok.model)):  # herd's streamer and the fallback
        seq = SequenceState([1], SamplingParams(max_new_tokens=len(ids)), decoder=decoder)
        deltas = _feed(seq, ids)
        assert "".join(deltas) == text == seq.completion().text
        assert not any("\ufffd" in d for d in deltas)


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        SequenceState([1], SamplingParams(stop=["x"]))
