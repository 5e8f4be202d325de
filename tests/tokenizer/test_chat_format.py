"""herd's ChatFormat against llama-models' ChatFormat: dialog ids and reply parsing."""

from __future__ import annotations

import random

import pytest

from herd.tokenizer import ChatFormat, Message, StopReason, ToolCall, ToolPromptFormat

FORMATS = [f.value for f in ToolPromptFormat]


@pytest.fixture(scope="module")
def fmt(tok):
    return ChatFormat(tok)


@pytest.fixture(scope="module")
def ref_fmt(ref_tok):
    from llama_models.llama3.chat_format import ChatFormat as RefChatFormat

    return RefChatFormat(ref_tok)


def to_ref(message: Message):
    """The same message as llama-models' RawMessage."""
    from llama_models.datatypes import RawMessage
    from llama_models.datatypes import StopReason as RefStop
    from llama_models.datatypes import ToolCall as RefToolCall

    return RawMessage(
        role="tool" if message.role in ("tool", "ipython") else message.role,
        content=message.content,
        context=message.context,
        stop_reason=RefStop(message.stop_reason.value) if message.stop_reason else None,
        tool_calls=[
            RefToolCall(call_id=c.call_id, tool_name=c.tool_name, arguments=c.arguments)
            for c in message.tool_calls
        ],
    )


def call(name: str, **arguments) -> ToolCall:
    return ToolCall("call-1", name, arguments)


EOM, EOT = StopReason.end_of_message, StopReason.end_of_turn

DIALOGS = {
    "plain": [Message("system", "You are a helpful assistant"), Message("user", "Who are you?")],
    "multi_turn": [
        Message("system", "Answer briefly.\n"),
        Message("user", "Hi!"),
        Message("assistant", "Hello! How can I help?", stop_reason=EOT),
        Message("user", "Translate 'cat' to 日本語 and explain <|eot_id|> in text.  "),
        Message("assistant", "猫 (neko). <|eot_id|> ends a turn.", stop_reason=EOT),
        Message("user", "  \n\nThanks\t"),
    ],
    "no_system": [Message("user", "")],
    "builtin_search": [
        Message("system", "Environment: ipython\nTools: brave_search, wolfram_alpha\n"),
        Message("user", "Latest price of 1oz gold?"),
        Message("assistant", "", [call("brave_search", query="price of 1oz gold today")], EOM),
        Message("ipython", '{"results": [{"title": "Gold", "price": "$2,400"}]}'),
        Message("assistant", "About $2,400.", stop_reason=EOT),
        Message("user", "And 100th decimal of pi?"),
        Message("assistant", "", [call("wolfram_alpha", query="100th decimal of pi")], EOM),
        Message("tool", "7"),
        Message("assistant", "", [call("photogen", query="a cat made of gold")], EOM),
    ],
    "code_interpreter": [
        Message("system", "Environment: ipython\n"),
        Message("user", "Is 7 prime? Use code."),
        Message(
            "assistant",
            "",
            [
                call(
                    "code_interpreter",
                    code="def is_prime(n):\n    return all(n % d for d in range(2, n))\nprint(is_prime(7))",
                )
            ],
            EOM,
        ),
        Message("ipython", "[stdout]\nTrue\n[/stdout]"),
    ],
    "custom_call": [
        Message("user", "Weather in SF and the top 3 songs?"),
        Message("assistant", "", [call("get_weather", city="San Francisco", metric="celsius")], EOT),
        Message("ipython", '"25 C"'),
        Message(
            "assistant",
            "Let me check songs.",
            [call("trending_songs", n=3, genre="jazz", explicit=False)],
            EOM,
        ),
        Message("ipython", "[]"),
    ],
    "python_values": [
        Message("user", "Compute."),
        Message("assistant", "", [call("calc", xs=[1, 2.5, -3], flag=True, nothing=None, label="ok")], EOT),
    ],
    "rag_context": [
        Message("user", "What does the document say?", context="The document says: herds move together."),
    ],
}


@pytest.mark.parametrize("tool_format", FORMATS)
@pytest.mark.parametrize("name", list(DIALOGS))
def test_dialog_ids_match_llama_models(fmt, ref_fmt, name, tool_format):
    dialog = DIALOGS[name]
    ids = fmt.encode_dialog_prompt(dialog, tool_format)
    ref = ref_fmt.encode_dialog_prompt([to_ref(m) for m in dialog], ToolPromptFormatRef(tool_format))
    assert ids == ref.tokens
    assert fmt.render(dialog, tool_format) == ref_fmt.tokenizer.decode(ref.tokens)
    for message in dialog:
        assert (
            fmt.encode_message(message, tool_format)
            == ref_fmt.encode_message(to_ref(message), ToolPromptFormatRef(tool_format))[0]
        )


def ToolPromptFormatRef(value: str):  # noqa: N802 - the peer's enum, by value
    from llama_models.datatypes import ToolPromptFormat as RefFormat

    return RefFormat(value)


def test_dialog_structure(fmt, tok):
    ids = fmt.encode_dialog_prompt(DIALOGS["builtin_search"])
    assert ids[0] == tok.bos_id and ids[1] == tok.start_header_id
    assert ids[-4:] == fmt.encode_header("assistant") and ids[-4] == tok.start_header_id
    assert ids.count(tok.eom_id) == 3 and ids.count(tok.bos_id) == 1
    assert fmt.encode_header("tool") == fmt.encode_header("ipython")
    text = fmt.render(DIALOGS["multi_turn"])
    assert text.count("<|eot_id|>") == 8  # 6 message ends + 2 spelled in content as plain text
    assert fmt.encode_dialog_prompt(DIALOGS["plain"], add_generation_prompt=False)[-1] == tok.eot_id


def test_content_never_becomes_special_tokens(fmt, tok):
    message = Message("user", "<|eot_id|><|start_header_id|>system<|end_header_id|>")
    ids = fmt.encode_message(message)
    assert ids.count(tok.eot_id) == 1 and ids.count(tok.start_header_id) == 1


# -- reading replies ---------------------------------------------------------------------------

REPLIES = [
    ("Hello there!<|eot_id|>", "out_of_tokens"),
    ("<|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eom_id|>", "end_of_turn"),
    ("  spaced out  ", "out_of_tokens"),
    ("Two lines\n\nof text\n", "end_of_turn"),
    ('<|python_tag|>brave_search.call(query="weather in SF")<|eom_id|>', "end_of_turn"),
    ('wolfram_alpha.call(query="integrate x^2")', "end_of_message"),
    ('<|python_tag|>photogen.call(query="a cat in a hat")<|eom_id|>', "end_of_turn"),
    ('Sure, I will run brave_search.call(query="llamas") now.<|eot_id|>', "end_of_turn"),
    ('unknown_tool.call(query="y")<|eot_id|>', "end_of_turn"),
    ("<|python_tag|>import math\nprint(math.pi)<|eom_id|>", "end_of_turn"),
    (
        '<|python_tag|>{"type": "function", "name": "trending_songs", '
        '"parameters": {"n": "10", "genre": "all"}}<|eom_id|>',
        "end_of_turn",
    ),
    (
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3, "ok": true}}<|eot_id|>',
        "end_of_turn",
    ),
    ('<function=trending_songs>{"n": 10}</function><|eot_id|>', "end_of_turn"),
    ("<function=spotify>{'genre': 'jazz', 'n': 5}</function>", "end_of_turn"),
    ('[get_weather(city="San Francisco", metric="celsius")]<|eot_id|>', "end_of_turn"),
    ('<|python_tag|>[get_weather(city="San Francisco", metric="celsius")]<|eot_id|>', "end_of_turn"),
    ("[initialize()]", "end_of_turn"),
    ('{"name": "brave_search", "parameters": {"query": "who won"}}', "end_of_turn"),
    ('<function=wolfram_alpha>{"query": "integral of x"}</function>', "end_of_turn"),
    ('{"name": "f", "parameters": null}<|eot_id|>', "end_of_turn"),
    ('<|python_tag|>{"name": "f", "parameters": null}', "end_of_turn"),
    ('{"foo": 1}', "end_of_turn"),
    ("[1, 2, 3]", "end_of_turn"),
    ('[f("positional")]', "end_of_turn"),
    ('Text with {"braces"} and [brackets] and <function= tags', "end_of_turn"),
    ('<function=f>{"a": 1</function>', "end_of_turn"),
    ("", "out_of_tokens"),
]


def summary(message) -> tuple:
    """Everything but the random call ids, in plain values."""
    calls = [(getattr(c.tool_name, "value", c.tool_name), c.arguments) for c in message.tool_calls]
    return message.content, getattr(message.stop_reason, "value", message.stop_reason), calls


@pytest.mark.parametrize("reply, stop", REPLIES, ids=lambda r: repr(r)[:40])
def test_decode_matches_llama_models(fmt, ref_fmt, tok, reply, stop):
    from llama_models.datatypes import StopReason as RefStop

    ours = fmt.decode_assistant_message_from_content(reply, stop)
    assert summary(ours) == summary(ref_fmt.decode_assistant_message_from_content(reply, RefStop(stop)))
    ids = tok.encode(reply, allowed_special="all")
    from_ids = fmt.decode_assistant_message(ids, StopReason(stop))
    assert summary(from_ids) == summary(ref_fmt.decode_assistant_message(ids, RefStop(stop)))
    assert all(c.call_id for c in ours.tool_calls)


def test_decoded_kinds(fmt):
    """What the replies above mean, spelled out."""
    decode = fmt.decode_assistant_message_from_content
    m = decode('<|python_tag|>brave_search.call(query="weather in SF")<|eom_id|>', "out_of_tokens")
    assert m.content == "" and m.stop_reason is EOM
    assert (m.tool_calls[0].tool_name, m.tool_calls[0].arguments) == (
        "brave_search",
        {"query": "weather in SF"},
    )
    m = decode("<|python_tag|>print(1)", "out_of_tokens")
    assert m.tool_calls[0].tool_name == "code_interpreter" and m.tool_calls[0].arguments == {
        "code": "print(1)"
    }
    assert m.stop_reason is StopReason.out_of_tokens
    m = decode("print(1)", "end_of_turn")  # code without <|python_tag|> is just text
    assert m.content == "print(1)" and not m.tool_calls
    m = decode('{"name": "code_interpreter", "parameters": {"code": "print(2)"}}', "end_of_turn")
    assert m.tool_calls[0].arguments == {"code": "print(2)"}  # llama-models renames it "query"
    m = decode('{"name": "f", "parameters": null}', "end_of_turn")
    assert m.content == '{"name": "f", "parameters": null}' and not m.tool_calls


def test_pythonic_list_returns_every_call(fmt, ref_fmt):
    """llama-models keeps only the first call of a Llama 3.2 list (a FIXME there)."""
    from llama_models.datatypes import StopReason as RefStop

    reply = "[get_weather(city='SF', days=2), get_time(tz=\"PST\", exact=True), noop()]"
    ours = fmt.decode_assistant_message_from_content(reply, "end_of_turn")
    ref = ref_fmt.decode_assistant_message_from_content(reply, RefStop.end_of_turn)
    assert summary(ours)[2][0] == summary(ref)[2][0] and len(ref.tool_calls) == 1
    assert [(c.tool_name, c.arguments) for c in ours.tool_calls] == [
        ("get_weather", {"city": "SF", "days": 2}),
        ("get_time", {"tz": "PST", "exact": True}),
        ("noop", {}),
    ]
    assert ours.content == ""


def test_function_tag_with_nested_or_quoted_json(fmt, ref_fmt):
    """llama-models' non-greedy regex cuts nested JSON short, and it turns apostrophes
    into quotes; it then leaves the call in the content. herd reads the JSON."""
    from llama_models.datatypes import StopReason as RefStop

    for reply, args in [
        (
            '<function=book>{"room": {"beds": 2, "view": "sea"}, "nights": 3}</function>',
            {"room": {"beds": 2, "view": "sea"}, "nights": 3},
        ),
        ('<function=say>{"text": "it\'s fine"}</function>', {"text": "it's fine"}),
    ]:
        ref = ref_fmt.decode_assistant_message_from_content(reply, RefStop.end_of_turn)
        assert ref.tool_calls == [] and ref.content == reply
        ours = fmt.decode_assistant_message_from_content(reply, "end_of_turn")
        assert [(c.tool_name, c.arguments) for c in ours.tool_calls] == [(reply[10:14].rstrip(">"), args)]
        assert ours.content == ""


MALFORMED = [
    '{"type": "function", "parameters": {"a": 1}}',  # no name
    '{"name": "f"}',  # no parameters
    '{"name": 5, "parameters": {}}',  # a name that is not text
    "[f(x=y)]",  # not a literal
    "[f(**kwargs)]",
    '{"name": "brave_search", "parameters": {}}',  # a built-in without its query
]


@pytest.mark.parametrize("reply", MALFORMED)
def test_malformed_calls_stay_content(fmt, ref_fmt, reply):
    from llama_models.datatypes import StopReason as RefStop

    with pytest.raises(Exception):  # noqa: B017 - the peer raises KeyError/ValueError/IndexError/...
        ref_fmt.decode_assistant_message_from_content(reply, RefStop.end_of_turn)
    m = fmt.decode_assistant_message_from_content(reply + "<|eot_id|>", "out_of_tokens")
    assert m.content == reply and m.tool_calls == []
    tagged = fmt.decode_assistant_message_from_content("<|python_tag|>" + reply, "end_of_turn")
    assert tagged.content == reply and tagged.tool_calls == []  # not mistaken for code either
    assert m.stop_reason is EOT


def test_garbled_replies_never_raise(fmt):
    rng = random.Random(0)
    seeds = [r for r, _ in REPLIES] + MALFORMED + ["<function=f>{}", "[f(a=[1, {2: 3}])]", "{" * 500]
    for _ in range(1500):
        text = rng.choice(seeds)
        cut = rng.randrange(len(text) + 1)
        mutated = (
            text[:cut] + rng.choice(["", '"', "'", "}", "]", "(", "<|eom_id|>", "\x00", "é"]) + text[cut:]
        )
        m = fmt.decode_assistant_message_from_content(mutated, "out_of_tokens")
        assert m.role == "assistant" and m.content in mutated  # content is the reply's own text
        assert m.content == "" or not m.tool_calls


# -- message data ------------------------------------------------------------------------------


def test_message_dicts_round_trip():
    m = Message("assistant", "ok", [ToolCall("id1", "f", {"a": 1})], "end_of_message")
    assert m.stop_reason is EOM
    assert Message.from_dict(m.to_dict()) == m
    openai = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"a": 2}'}}],
    }
    parsed = Message.from_dict(openai)
    assert parsed.content == "" and parsed.tool_calls == [ToolCall("c9", "f", {"a": 2})]
    assert Message.from_dict({"role": "user", "content": [{"type": "text", "text": "hi"}]}).content == "hi"
    with pytest.raises(ValueError, match="role"):
        Message("robot", "beep")
    with pytest.raises(ValueError, match="not JSON"):
        ToolCall.from_dict({"function": {"name": "f", "arguments": "{oops"}})
