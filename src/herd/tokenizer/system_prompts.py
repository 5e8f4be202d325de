"""System prompts and tool descriptions for Llama 3.1 / 3.2, laid out as llama-models
documents them (``llama3_1/prompt_format.md``, ``llama3_2/text_prompt_format.md``).

- ``Environment: ipython`` turns on the code interpreter (which is never named on the
  ``Tools:`` line); ``Tools: brave_search, wolfram_alpha`` turns on the other built-ins.
- ``Cutting Knowledge Date`` / ``Today Date`` lines when a date is given.
- Custom tools: Llama 3.1 reads them (JSON or ``<function=...>`` instructions) from a
  user message placed first; Llama 3.2 reads its pythonic instructions from the system
  message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from herd.tokenizer.messages import BUILTIN_TOOLS, Message, ToolPromptFormat

KNOWLEDGE_CUTOFF = "December 2023"

_JSON_INTRO = (
    "Answer the user's question by making use of the following functions if needed.\n"
    "If none of the function can be used, please say so.\n"
    "Here is a list of functions in JSON format:\n"
)
_JSON_OUTRO = "\nReturn function calls in JSON format."

_TAG_INTRO = "You have access to the following functions:\n\n"
_TAG_OUTRO = (
    "Think very carefully before calling functions.\n"
    "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
    '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
    "Reminder:\n"
    "- If looking for real time information use relevant functions before falling back to brave_search\n"
    "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
    "- Required parameters MUST be specified\n"
    "- Only call one function at a time\n"
    "- Put the entire function call reply on one line"
)

_PYTHONIC_INTRO = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the function can be used, point it out. If the given question lacks the parameters "
    "required by the function,\n"
    "also point it out. You should only return the function call in tools call sections.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "Here is a list of functions in JSON format that you can invoke.\n\n"
)


@dataclass
class ToolParam:
    param_type: str = "string"
    description: str | None = None
    required: bool = True
    default: Any = None


@dataclass
class ToolDefinition:
    """A custom tool the model may call: a name, a description and its parameters."""

    tool_name: str
    description: str | None = None
    parameters: dict[str, ToolParam] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ToolDefinition:
        """From an OpenAI tool ``{"type": "function", "function": {...}}``, a bare
        ``{"name", "description", "parameters": <JSON schema>}``, or llama-models' form
        whose parameters map names to ``{"param_type", "description", "required", "default"}``."""
        fn = spec.get("function", spec)
        name = fn.get("name", fn.get("tool_name"))
        if not isinstance(name, str) or not name:
            raise ValueError(f"tool definition without a name: {spec!r}")
        params = fn.get("parameters") or {}
        if "properties" in params or params.get("type") == "object":
            required = set(params.get("required", []))
            parsed = {
                pname: ToolParam(
                    p.get("type", "string"), p.get("description"), pname in required, p.get("default")
                )
                for pname, p in (params.get("properties") or {}).items()
            }
        else:
            parsed = {
                pname: ToolParam(
                    p.get("param_type", p.get("type", "string")),
                    p.get("description"),
                    p.get("required", True),
                    p.get("default"),
                )
                for pname, p in params.items()
            }
        return cls(name, fn.get("description"), parsed)

    def required_names(self) -> list[str]:
        return [n for n, p in self.parameters.items() if p.required]


def format_date(today: dt.date | str) -> str:
    """``26 Jul 2024`` for a date; a string is used as given."""
    return today if isinstance(today, str) else today.strftime("%d %b %Y")


def _as_tools(custom_tools: Iterable[ToolDefinition | dict[str, Any]]) -> list[ToolDefinition]:
    return [t if isinstance(t, ToolDefinition) else ToolDefinition.from_dict(t) for t in custom_tools]


def _json_tool(tool: ToolDefinition) -> str:
    """One tool in Llama 3.1's JSON listing (properties as a list, as llama-models writes it)."""
    props = ",".join(
        f'\n                {{\n                    "{name}": {{\n'
        f'                        "type": "object",\n'
        f'                        "description": "{p.description}"\n'
        f"                    }}\n                }}"
        for name, p in tool.parameters.items()
    )
    return (
        '{\n    "type": "function",\n    "function": {\n'
        f'        "name": "{tool.tool_name}",\n'
        f'        "description": "{tool.description}",\n'
        '        "parameters": {\n            "type": "object",\n'
        f'            "properties": [{props}\n            ],\n'
        f'            "required": {json.dumps(tool.required_names())}\n'
        "        }\n    }\n}\n"
    )


def _html_safe_json(value: Any) -> str:
    """JSON as Jinja's ``tojson`` writes it (sorted keys, <>&' escaped)."""
    text = json.dumps(value, sort_keys=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(ch, esc)
    return text


def _tag_tool(tool: ToolDefinition) -> str:
    params = {
        n: {"description": p.description, "param_type": p.param_type, "required": p.required}
        for n, p in tool.parameters.items()
    }
    return (
        f"Use the function '{tool.tool_name}' to '{tool.description}':\n"
        f'{{"name": "{tool.tool_name}", "description": "{tool.description}", '
        f'"parameters": {_html_safe_json(params)}}}\n\n'
    )


def _pythonic_spec(tool: ToolDefinition) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name, p in tool.parameters.items():
        props[name] = {"type": p.param_type, "description": p.description or ""}
        if p.default:
            props[name]["default"] = str(p.default)
    return {
        "name": tool.tool_name,
        "description": tool.description or "",
        "parameters": {"type": "dict", "required": tool.required_names(), "properties": props},
    }


def custom_tools_prompt(
    custom_tools: Sequence[ToolDefinition | dict[str, Any]],
    tool_format: ToolPromptFormat | str = ToolPromptFormat.json,
) -> str:
    """The instructions that describe ``custom_tools`` in the given call format."""
    tools = _as_tools(custom_tools)
    fmt = ToolPromptFormat(tool_format)
    if fmt is ToolPromptFormat.json:
        return _JSON_INTRO + "".join(_json_tool(t) for t in tools) + _JSON_OUTRO
    if fmt is ToolPromptFormat.function_tag:
        return _TAG_INTRO + "".join(_tag_tool(t) for t in tools) + _TAG_OUTRO
    return _PYTHONIC_INTRO + json.dumps([_pythonic_spec(t) for t in tools], indent=4, ensure_ascii=False)


ToolsIn = Literal["auto", "system", "user"]


def _tools_in_system(custom_tools: Sequence[Any], fmt: ToolPromptFormat, where: ToolsIn) -> bool:
    if where not in ("auto", "system", "user"):
        raise ValueError(f"custom_tools_in must be 'auto', 'system' or 'user', got {where!r}")
    if not custom_tools:
        return False
    return where == "system" or (where == "auto" and fmt is ToolPromptFormat.python_list)


def system_prompt(
    *,
    tools: Iterable[str] = (),
    custom_tools: Sequence[ToolDefinition | dict[str, Any]] = (),
    tool_format: ToolPromptFormat | str = ToolPromptFormat.json,
    today: dt.date | str | None = None,
    instructions: str | None = None,
    custom_tools_in: ToolsIn = "auto",
) -> str:
    """The system message text.

    ``tools`` names built-in tools (brave_search, wolfram_alpha, photogen,
    code_interpreter); ``today`` adds the knowledge-cutoff and date lines; ``instructions``
    is the user's own system prompt, appended. Custom tools go in this text when
    ``custom_tools_in`` is "system" ("auto": only for the pythonic format of Llama 3.2),
    else in a user message (see :func:`prepare_dialog`).
    """
    builtin = list(tools)
    unknown = [t for t in builtin if t not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"unknown built-in tool {unknown[0]!r}; built-ins are {', '.join(BUILTIN_TOOLS)}")
    fmt = ToolPromptFormat(tool_format)
    pythonic = bool(custom_tools) and fmt is ToolPromptFormat.python_list
    named = [t for t in builtin if t != "code_interpreter"]

    head = ""
    if builtin or (custom_tools and not pythonic):
        head = "Environment: ipython\n"
        if named:
            head += f"Tools: {', '.join(named)}\n"
        elif today is not None:
            head += "\n"
    if today is not None:
        head += f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {format_date(today)}\n"
    sections = [head] if head else []
    if _tools_in_system(custom_tools, fmt, custom_tools_in):
        sections.append(custom_tools_prompt(custom_tools, fmt).rstrip("\n") + "\n")
    if not sections:
        return instructions or ""  # nothing to add: the user's system prompt as it is
    if instructions:
        sections.append(instructions + "\n")
    text = "\n".join(sections)
    return text.strip("\n") if pythonic else text


def prepare_dialog(
    messages: Sequence[Message],
    *,
    tools: Iterable[str] = (),
    custom_tools: Sequence[ToolDefinition | dict[str, Any]] = (),
    tool_format: ToolPromptFormat | str = ToolPromptFormat.json,
    today: dt.date | str | None = None,
    custom_tools_in: ToolsIn = "auto",
) -> list[Message]:
    """``messages`` with the system message built by :func:`system_prompt` (a leading
    system message becomes its ``instructions``; none when there is nothing to say) and,
    for Llama 3.1 custom tools, the tool instructions as the first user message."""
    messages = list(messages)
    instructions = None
    if messages and messages[0].role == "system":
        instructions = messages.pop(0).content
    fmt = ToolPromptFormat(tool_format)
    system = system_prompt(
        tools=tools,
        custom_tools=custom_tools,
        tool_format=fmt,
        today=today,
        instructions=instructions,
        custom_tools_in=custom_tools_in,
    )
    out = [Message("system", system)] if system else []
    if custom_tools and not _tools_in_system(custom_tools, fmt, custom_tools_in):
        out.append(Message("user", custom_tools_prompt(custom_tools, fmt)))
    return out + messages
