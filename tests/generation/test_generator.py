"""The generator against transformers' generate (same weights), and its contracts:
batching, per-row stops, context limits, logprobs, streaming, chat."""

from __future__ import annotations

import math

import pytest
import torch

from herd.generation import Generator, SamplingParams
from tests.conftest import make_tiny_model
from tests.generation.conftest import full_logits, hf_twin

GREEDY = dict(temperature=0, stop_token_ids=())


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[128000] + torch.randint(0, 128000, (n - 1,), generator=g).tolist() for n in lengths]


def _hf_greedy(hf, prompts, n):
    """transformers' generate, greedy, left-padded batch with its attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0)
    return out[:, width:].tolist()


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_greedy_matches_transformers_past_the_original_rope_context(preset):
    model = make_tiny_model(preset, seed=1)
    prompt = _prompts([236])[0]
    got = Generator(model).generate([prompt], SamplingParams(max_new_tokens=40, **GREEDY))[0]
    assert len(got.token_ids) == 40 and got.finish_reason == "length"  # decodes positions 236..274
    assert got.token_ids == _hf_greedy(hf_twin(model), [prompt], 40)[0]


def test_batched_greedy_matches_transformers_and_single_runs(tiny, tiny_hf):
    prompts = _prompts([7, 30, 1, 18], seed=2)
    gen = Generator(tiny)
    got = [c.token_ids for c in gen.generate(prompts, SamplingParams(max_new_tokens=24, **GREEDY))]
    assert got == _hf_greedy(tiny_hf, prompts, 24)
    assert got[1] == gen.generate([prompts[1]], SamplingParams(max_new_tokens=24, **GREEDY))[0].token_ids


def test_rows_finish_on_their_own(tiny):
    prompts = _prompts([5, 12], seed=3)
    gen = Generator(tiny)
    free = gen.generate(prompts, SamplingParams(max_new_tokens=12, **GREEDY))
    stop_id = free[0].token_ids[4]
    assert stop_id not in free[0].token_ids[:4] and stop_id not in free[1].token_ids
    got = gen.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[stop_id]))
    assert got[0].token_ids == free[0].token_ids[:4]
    assert got[0].finish_reason == "stop" and got[0].stop_token == stop_id
    assert got[1].token_ids == free[1].token_ids and got[1].finish_reason == "length"


def test_per_prompt_params(tiny):
    prompts = _prompts([6, 9], seed=4)
    got = Generator(tiny).generate(prompts, [SamplingParams(max_new_tokens=3, **GREEDY),
                                             SamplingParams(max_new_tokens=9, **GREEDY)])
    assert [len(c.token_ids) for c in got] == [3, 9]
    with pytest.raises(ValueError, match="2 SamplingParams for 1 prompts"):
        Generator(tiny).generate(prompts[:1], [SamplingParams(), SamplingParams()])


def test_default_stop_tokens_come_from_the_model_config(tiny):
    gen = Generator(tiny)
    eos = tiny.args.eos_token_id

    def eos_at_3(generated, logits):
        if len(generated) == 3:
            logits = torch.full_like(logits, -math.inf)
            logits[eos] = 0
        return logits

    c = gen.generate([[128000]], SamplingParams(temperature=0, logits_processors=[eos_at_3]))[0]
    assert c.finish_reason == "stop" and c.stop_token == eos and len(c.token_ids) == 3


def test_context_limits():
    model = make_tiny_model("tiny", max_seq_len=64)
    gen = Generator(model)
    c = gen.generate(_prompts([60]), SamplingParams(max_new_tokens=10, **GREEDY))[0]
    assert len(c.token_ids) == 4 and c.finish_reason == "length"  # clamped to the context left
    with pytest.raises(ValueError, match=r"prompt 1 has 64 tokens .* context is 64 tokens"):
        gen.generate(_prompts([3, 64]), SamplingParams(**GREEDY))
    with pytest.raises(ValueError, match="outside"):
        gen.generate([[128256]], SamplingParams(**GREEDY))


def test_logprobs_equal_the_full_forward_log_softmax(tiny):
    prompt = _prompts([9], seed=5)[0]
    params = SamplingParams(temperature=0.8, top_k=20, seed=3, max_new_tokens=12, stop_token_ids=(),
                            logprobs=3)
    c = Generator(tiny).generate([prompt], params)[0]
    ref = full_logits(tiny, prompt + c.token_ids).double().log_softmax(-1)[len(prompt) - 1:-1]
    assert len(c.logprobs) == len(c.token_ids) == 12
    for step, (token, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
        assert lp.token_id == token
        assert lp.logprob == pytest.approx(ref[step, token].item(), abs=1e-4)
        assert [t for t, _ in lp.top] == ref[step].topk(3).indices.tolist()


def test_seeded_generation_is_reproducible(tiny):
    gen = Generator(tiny)
    prompts = _prompts([4], seed=6) * 2
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=11, max_new_tokens=8, stop_token_ids=())
    a, b = gen.generate(prompts, p), gen.generate(prompts, p)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert a[0].token_ids != a[1].token_ids  # same prompt, row i samples with seed + i
    other = gen.generate(prompts, SamplingParams(temperature=1.0, top_p=0.95, seed=12, max_new_tokens=8,
                                                 stop_token_ids=()))
    assert other[0].token_ids != a[0].token_ids
    assert other[0].token_ids == a[1].token_ids  # seed 12 alone is what row 1 of seed 11 drew
    greedy = gen.generate(prompts[:1], SamplingParams(max_new_tokens=8, **GREEDY))[0].token_ids
    assert a[0].token_ids != greedy


def _force(ids: list[int]):
    """A logits processor that makes the model say exactly ``ids``."""
    def processor(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(logits, -math.inf)
        out[ids[len(generated)]] = 0.0
        return out
    return processor


def test_stream_deltas_concatenate_to_the_text(tiny, tok):
    text = "Llama 🦙 says 你好 — naïve café"
    forced = tok.encode(text) + [tok.eot_id]
    gen = Generator(tiny, tok)
    params = SamplingParams(temperature=0.7, seed=0, logits_processors=[_force(forced)])
    stream = gen.stream([tok.bos_id], params)
    deltas = list(stream)
    assert len(deltas) > 5 and not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == text == stream.completion.text
    assert stream.completion.stop_token == tok.eot_id and stream.completion.stop_reason == "end_of_turn"


def test_stream_hides_a_stop_string(tiny, tok):
    forced = tok.encode("Sure. Observation: it rains")
    gen = Generator(tiny, tok)
    stream = gen.stream([tok.bos_id], SamplingParams(temperature=0, stop=["Observation:"],
                                                     logits_processors=[_force(forced)]))
    deltas = list(stream)
    assert "".join(deltas) == "Sure. " == stream.completion.text
    assert stream.completion.stop == "Observation:" and stream.completion.finish_reason == "stop"


def test_chat_returns_parsed_tool_calls(tiny, tok):
    from herd.tokenizer import Message

    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    reply = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    gen = Generator(tiny, tok)
    prompts = []
    generate = gen.generate
    gen.generate = lambda p, params: prompts.extend(p) or generate(p, params)

    say_call = _force(tok.encode(reply) + [tok.eom_id])
    msg = gen.chat([{"role": "user", "content": "Weather in Paris?"}],
                   SamplingParams(temperature=0, logits_processors=[say_call]), tools=[weather])
    assert msg.role == "assistant" and msg.content == ""
    assert [(c.tool_name, c.arguments) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert msg.stop_reason.value == "end_of_message"
    prompt_text = tok.decode(prompts[0])
    assert '"get_weather"' in prompt_text
    assert prompt_text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # without tools the dialog is encoded as it is
    plain = gen.chat([Message("user", "Hi")], SamplingParams(temperature=0, logits_processors=[
        _force(tok.encode("Hello!") + [tok.eot_id])]))
    assert (plain.content, plain.tool_calls, plain.stop_reason.value) == ("Hello!", [], "end_of_turn")
    assert "get_weather" not in tok.decode(prompts[1])


@pytest.mark.slow  # torch.compile takes ~30 s on 2 cores
def test_compiled_decoding_matches_eager(tiny):
    prompts = _prompts([5, 11], seed=7)
    params = SamplingParams(max_new_tokens=20, **GREEDY)
    eager = Generator(tiny).generate(prompts, params)
    compiled = Generator(tiny, compile=True).generate(prompts, params)
    assert [c.token_ids for c in compiled] == [c.token_ids for c in eager]


def test_stream_and_chat_need_a_tokenizer(tiny):
    with pytest.raises(ValueError, match="tokenizer"):
        Generator(tiny).stream([1], SamplingParams())
    with pytest.raises(ValueError, match="tokenizer"):
        Generator(tiny).chat([], SamplingParams())
