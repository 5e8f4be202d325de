"""Streaming over a background engine loop: text deltas (sync and async) add up to the
completion, requests join a running batch, cancellation stops a stream and frees its blocks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from herd.engine import Engine
from herd.engine.stream import EngineLoop
from herd.generation import Generator, SamplingParams
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def tok(llama3_tokenizer_path):
    from herd.tokenizer import Tokenizer

    return Tokenizer.from_file(llama3_tokenizer_path)


@pytest.fixture(scope="module")
def full_vocab_model():
    return make_tiny_model("tiny", seed=2)


def _prompt(tok, text):
    return tok.encode(text, bos=True, eos=False)


def test_deltas_add_up_to_the_generator_completion_sync_and_async(full_vocab_model, tok):
    texts = ["Bonjour, le monde", "Grüße aus München — 日本語も", "def f(x):"]
    params = [SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=()),
              SamplingParams(temperature=0.9, seed=3, max_new_tokens=10, stop_token_ids=()),
              SamplingParams(temperature=0, max_new_tokens=9, stop_token_ids=())]
    gen = Generator(full_vocab_model, tok)
    want = [gen.generate([_prompt(tok, t)], p)[0] for t, p in zip(texts, params, strict=True)]
    loop = EngineLoop(Engine(full_vocab_model, tok, num_blocks=32, block_size=8))
    try:
        streams = [loop.submit(_prompt(tok, t), p) for t, p in zip(texts, params, strict=True)]
        results: dict[int, str] = {}

        def read(i):
            results[i] = "".join(streams[i])

        threads = [threading.Thread(target=read, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()

        async def read_async():
            return "".join([d async for d in streams[2]])

        results[2] = asyncio.run(read_async())
        for t in threads:
            t.join()
        for i, w in enumerate(want):
            assert results[i] == streams[i].completion.text == w.text
            assert streams[i].completion.token_ids == w.token_ids == streams[i].token_ids
        assert loop.engine.stats.max_batch > 1
    finally:
        loop.close()
    assert loop.engine.blocks.num_used == 0


def test_cancel_stops_a_stream_and_frees_its_blocks(full_vocab_model, tok):
    engine = Engine(full_vocab_model, tok, num_blocks=32, block_size=8)
    loop = EngineLoop(engine)
    try:
        long = loop.submit(_prompt(tok, "Once upon a time"),
                           SamplingParams(temperature=0, max_new_tokens=200, stop_token_ids=()))
        short = loop.submit(_prompt(tok, "Hi"), SamplingParams(temperature=0, max_new_tokens=5, stop_token_ids=()))
        it = iter(long)
        next(it)
        long.cancel()
        for _ in it:
            pass
        assert long.completion.finish_reason == "cancelled" and len(long.completion.token_ids) < 200
        assert short.result().finish_reason == "length"
    finally:
        loop.close()
    assert engine.blocks.num_used == 0


def test_submit_validates_at_once(full_vocab_model, tok):
    loop = EngineLoop(Engine(full_vocab_model, tok, num_blocks=4, block_size=8))
    try:
        with pytest.raises(ValueError, match="prompt is empty"):
            loop.submit([])
    finally:
        loop.close()


def test_stop_strings_cut_the_text_and_are_never_streamed(full_vocab_model, tok):
    prompt = _prompt(tok, "The weather today")
    free = Generator(full_vocab_model, tok).generate(
        [prompt], SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=()))[0].text
    stop = free[len(free) // 2: len(free) // 2 + 3]
    params = SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=(), stop=(stop,))
    want = Generator(full_vocab_model, tok).generate([prompt], params)[0]
    assert want.finish_reason == "stop" and want.stop == stop
    loop = EngineLoop(Engine(full_vocab_model, tok, num_blocks=16, block_size=8))
    try:
        stream = loop.submit(prompt, params)
        deltas = list(stream)
    finally:
        loop.close()
    assert "".join(deltas) == stream.completion.text == want.text
    assert stop not in "".join(deltas) and stream.completion.stop == stop
