"""The chat template in the saved tokenizer_config.json, rendered by transformers."""

from __future__ import annotations

import json

import pytest

from herd.tokenizer import ChatFormat, Message

HEAD = "Cutting Knowledge Date: December 2023\nToday Date: {}\n\n"


@pytest.fixture(scope="module")
def hf(saved_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(saved_dir))


@pytest.fixture(scope="module")
def fmt(tok):
    return ChatFormat(tok)


def apply(hf, messages, **kwargs) -> str:
    kwargs.setdefault("add_generation_prompt", True)
    return hf.apply_chat_template(messages, tokenize=False, **kwargs)


PLAIN = [
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Who are you?"},
    ],
    [{"role": "user", "content": "  Hello!\n"}],
    [
        {"role": "system", "content": "\nBe brief. "},
        {"role": "user", "content": "What's 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3*3?\n\n"},
    ],
]


@pytest.mark.parametrize("messages", PLAIN, ids=["system", "no_system", "multi_turn"])
@pytest.mark.parametrize("date", [None, "21 Sep 2024"])
def test_plain_dialogs_render_like_herd(hf, fmt, tok, messages, date):
    """Hugging Face's Llama 3.1 layout: a system message with the date lines always,
    contents trimmed."""
    kwargs = {"date_string": date} if date else {}
    system = messages[0]["content"].strip() if messages[0]["role"] == "system" else ""
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    expected = [Message("system", HEAD.format(date or "26 Jul 2024") + system)]
    expected += [Message(m["role"], m["content"].strip()) for m in turns]
    text = apply(hf, messages, **kwargs)
    assert text == fmt.render(expected)
    assert hf(text, add_special_tokens=False)["input_ids"] == fmt.encode_dialog_prompt(expected)
    assert apply(hf, messages, add_generation_prompt=False, **kwargs) == fmt.render(
        expected, add_generation_prompt=False
    )


def test_builtin_tool_round(hf, fmt):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Price of gold?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "brave_search", "arguments": {"query": "gold price"}},
                }
            ],
        },
        {"role": "tool", "content": "$2,400 per ounce"},
    ]
    text = apply(hf, messages, builtin_tools=["brave_search", "wolfram_alpha", "code_interpreter"])
    system = "Environment: ipython\nTools: brave_search, wolfram_alpha\n\n" + HEAD.format("26 Jul 2024")
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        + system
        + "You are a helpful assistant."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nPrice of gold?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '<|python_tag|>brave_search.call(query="gold price")<|eom_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"$2,400 per ounce"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # The model's reply to such a prompt parses back into the call.
    reply = fmt.decode_assistant_message_from_content(
        '<|python_tag|>brave_search.call(query="gold price")<|eom_id|>', "out_of_tokens"
    )
    assert (reply.tool_calls[0].tool_name, reply.tool_calls[0].arguments) == (
        "brave_search",
        {"query": "gold price"},
    )


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_json_tools_in_first_user_message(hf, fmt):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        {"role": "tool", "content": "18 C"},
    ]
    text = apply(hf, messages, tools=[WEATHER])
    call_format = (
        'Respond in the format {"name": function name, "parameters": '
        "dictionary of argument name and its value}.Do not use variables.\n\n"
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        + HEAD.format("26 Jul 2024")
        + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n\n"
        + call_format
        + json.dumps(WEATHER, indent=4)
        + "\n\nWeather in Paris?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"18 C"<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    in_system = apply(hf, messages[:1], tools=[WEATHER], tools_in_user_message=False)
    assert "You have access to the following functions." in in_system.split("<|eot_id|>")[0]
    assert in_system.split("<|eot_id|>")[1].endswith("\n\nWeather in Paris?")
    reply = fmt.decode_assistant_message_from_content(
        '{"name": "get_weather", "parameters": {"city": "Paris"}}', "end_of_turn"
    )
    assert (reply.tool_calls[0].tool_name, reply.tool_calls[0].arguments) == (
        "get_weather",
        {"city": "Paris"},
    )


def test_template_refuses_what_llama31_cannot_do(hf):
    two_calls = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"function": {"name": "a", "arguments": {}}},
                {"function": {"name": "b", "arguments": {}}},
            ],
        },
    ]
    with pytest.raises(Exception, match="one tool call"):
        apply(hf, two_calls)
    with pytest.raises(Exception, match="need a user message"):
        apply(hf, [{"role": "system", "content": "s"}], tools=[WEATHER])
