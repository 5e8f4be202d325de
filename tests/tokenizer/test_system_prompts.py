"""System prompts and tool instructions against the prompts llama-models documents in
``llama3_1/prompt_format.md`` and ``llama3_2/text_prompt_format.md`` (read from the
installed package)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from herd.tokenizer import (
    ChatFormat,
    Message,
    StopReason,
    ToolCall,
    ToolDefinition,
    custom_tools_prompt,
    prepare_dialog,
    system_prompt,
)


def documented_prompts(doc: str) -> list[str]:
    import llama_models

    text = (Path(llama_models.__file__).parent / doc).read_text(encoding="utf-8")
    return re.findall(r"##### Input Prompt Format\n```\n(.*?)\n```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def prompts31() -> list[str]:
    return documented_prompts("llama3_1/prompt_format.md")


@pytest.fixture(scope="module")
def prompts32() -> list[str]:
    return documented_prompts("llama3_2/text_prompt_format.md")


def find(prompts: list[str], needle: str) -> str:
    (found,) = [p for p in prompts if needle in p]
    return found


@pytest.fixture(scope="module")
def fmt(tok):
    return ChatFormat(tok)


TRENDING_SONGS = {  # llama-models' own definition form
    "tool_name": "trending_songs",
    "description": "Returns the trending songs on a Music site",
    "parameters": {
        "n": {"param_type": "int", "description": "The number of songs to return", "required": True},
        "genre": {"param_type": "str", "description": "The genre of the songs to return", "required": False},
    },
}

GET_WEATHER = {  # an OpenAI / JSON-schema tool
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather info for places",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The name of the city to get the weather for"},
                "metric": {
                    "type": "string",
                    "description": "The metric for weather. Options are: celsius, fahrenheit",
                    "default": "celsius",
                },
            },
            "required": ["city"],
        },
    },
}


def test_plain_dialogs_are_left_alone(fmt, prompts31, prompts32):
    dialog = [Message("system", "You are a helpful assistant"), Message("user", "Who are you?")]
    assert prepare_dialog(dialog) == dialog
    assert fmt.render(prepare_dialog(dialog)) == find(prompts32, "Who are you?")
    dialog[1] = Message("user", "Answer who are you in the form of jeopardy?")
    assert fmt.render(dialog) == find(prompts31, "jeopardy")


def test_builtin_tools(fmt, prompts31):
    dialog = prepare_dialog(
        [
            Message("system", "You are a helpful assistant."),
            Message("user", "Search the web for the latest price of 1oz gold?"),
        ],
        tools=["code_interpreter", "brave_search", "wolfram_alpha"],
        today="21 September 2024",
    )
    assert fmt.render(dialog) == find(prompts31, "1oz gold")
    assert dialog[0].content.startswith("Environment: ipython\nTools: brave_search, wolfram_alpha\nCutting")


def test_builtin_tools_full_interaction(fmt, prompts31):
    documented = find(prompts31, "100th decimal of pi?")
    result = documented.split("ipython<|end_header_id|>\n\n", 1)[1].split("<|eot_id|>", 1)[0]
    assert (
        system_prompt(tools=["brave_search", "wolfram_alpha"])
        == "Environment: ipython\nTools: brave_search, wolfram_alpha\n"
    )
    dialog = prepare_dialog(
        [
            Message("user", "What is the 100th decimal of pi?"),
            Message(
                "assistant",
                "",
                [ToolCall("1", "wolfram_alpha", {"query": "100th decimal of pi"})],
                StopReason.end_of_message,
            ),
            Message("tool", result),
        ],
        tools=["brave_search", "wolfram_alpha"],
    )
    # llama-models stopped writing <|python_tag|> before re-encoded brave_search /
    # wolfram_alpha calls after this document was generated; herd encodes as it does now.
    assert fmt.render(dialog) == documented.replace("<|python_tag|>wolfram_alpha", "wolfram_alpha")


def test_code_interpreter_only(fmt, prompts32):
    dialog = prepare_dialog(
        [Message("user", "Write code to check if number is prime. Use it to verify if number 7 is prime")],
        tools=["code_interpreter"],
        today="24 September 2024",
    )
    assert dialog[0].content == (
        "Environment: ipython\n\nCutting Knowledge Date: December 2023\nToday Date: 24 September 2024\n"
    )
    assert fmt.render(dialog) == find(prompts32, "verify if number 7")


@pytest.mark.parametrize(
    "tool_format, needle", [("json", "Return function calls in JSON"), ("function_tag", "<function=")]
)
def test_llama31_custom_tools_in_first_user_message(fmt, prompts31, tool_format, needle):
    dialog = prepare_dialog(
        [
            Message("system", "You are a helpful assistant."),
            Message("user", "Use tools to get latest trending songs"),
        ],
        custom_tools=[TRENDING_SONGS],
        tool_format=tool_format,
        today="21 September 2024",
    )
    assert [m.role for m in dialog] == ["system", "user", "user"]
    documented = find(prompts31, needle)
    assert fmt.render(dialog) == documented
    assert custom_tools_prompt([TRENDING_SONGS], tool_format) in documented


def test_llama32_pythonic_tools_in_system_message(fmt, prompts32):
    dialog = prepare_dialog(
        [Message("user", "What is the weather in SF and Seattle?")],
        custom_tools=[GET_WEATHER],
        tool_format="python_list",
    )
    assert [m.role for m in dialog] == ["system", "user"]
    assert fmt.render(dialog) == find(prompts32, "SF and Seattle")


def test_llama32_tool_call_round(fmt, prompts32):
    documented = find(prompts32, '"25 C"')
    dialog = prepare_dialog(
        [
            Message("user", "What is the weather in SF?"),
            Message(
                "assistant",
                "",
                [ToolCall("1", "get_weather", {"city": "San Francisco", "metric": "celsius"})],
                StopReason.end_of_turn,
            ),
            Message("ipython", '"25 C"'),
        ],
        custom_tools=[GET_WEATHER],
        tool_format="python_list",
    )
    rendered = fmt.render(dialog, "python_list")
    # As above: current llama-models writes no <|python_tag|> before a custom call.
    assert rendered == documented.replace("<|python_tag|>[get_weather", "[get_weather")


def test_tool_definition_forms_agree():
    schema = {
        "name": "trending_songs",
        "description": "Returns the trending songs on a Music site",
        "parameters": {
            "type": "object",
            "properties": {
                "n": {"type": "int", "description": "The number of songs to return"},
                "genre": {"type": "str", "description": "The genre of the songs to return"},
            },
            "required": ["n"],
        },
    }
    for tool_format in ("json", "function_tag", "python_list"):
        assert custom_tools_prompt([schema], tool_format) == custom_tools_prompt(
            [TRENDING_SONGS], tool_format
        )
    assert ToolDefinition.from_dict(schema).required_names() == ["n"]
    with pytest.raises(ValueError, match="without a name"):
        ToolDefinition.from_dict({"description": "nameless"})


def test_several_tools_and_escaping():
    two = [TRENDING_SONGS, GET_WEATHER]
    json_text = custom_tools_prompt(two, "json")
    assert json_text.count('"type": "function"') == 2 and json_text.index("trending") < json_text.index(
        "get_weather"
    )
    assert "}\n{" in json_text  # tools follow each other directly, as llama-models lists them
    tag_text = custom_tools_prompt(
        [
            {
                "name": "cmp",
                "description": "a<b",
                "parameters": {"x": {"param_type": "str", "description": "it's <x> & y"}},
            }
        ],
        "function_tag",
    )
    assert "it\\u0027s \\u003cx\\u003e \\u0026 y" in tag_text  # Jinja's tojson escaping
    assert "Use the function 'cmp' to 'a<b':" in tag_text
    python_text = custom_tools_prompt(two, "python_list")
    assert python_text.endswith("}\n]") and '"default": "celsius"' in python_text


def test_system_prompt_rules():
    assert system_prompt() == ""
    assert system_prompt(instructions="Be brief.") == "Be brief."
    assert (
        system_prompt(today=dt.date(2024, 7, 26))
        == "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n"
    )
    with_tools = system_prompt(
        tools=["code_interpreter", "brave_search"], today="26 Jul 2024", instructions="Hi"
    )
    assert with_tools == (
        "Environment: ipython\nTools: brave_search\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nHi\n"
    )
    assert "code_interpreter" not in system_prompt(tools=["code_interpreter"])
    with pytest.raises(ValueError, match="unknown built-in tool 'calculator'"):
        system_prompt(tools=["calculator"])
    in_system = system_prompt(custom_tools=[TRENDING_SONGS], custom_tools_in="system", instructions="Hi")
    assert in_system.startswith("Environment: ipython\n\nAnswer the user's question") and in_system.endswith(
        "\n\nHi\n"
    )
    pythonic = system_prompt(custom_tools=[GET_WEATHER], tool_format="python_list", instructions="Be brief.")
    assert pythonic.startswith("You are an expert in composing functions.") and pythonic.endswith(
        "]\n\nBe brief."
    )
    assert "Environment: ipython" not in pythonic
    with pytest.raises(ValueError, match="custom_tools_in"):
        system_prompt(custom_tools=[GET_WEATHER], custom_tools_in="assistant")
