"""Tool calls as Llama 3.x writes them, and back.

Parsing follows llama-models' ``decode_assistant_message`` rule by rule, in its order:
a ``<function=name>{...}`` tag, else a whole-reply JSON object with ``"type": "function"``
or a ``"name"``, else a Llama 3.2 pythonic list ``[f(a=1), g(b="x")]``, else a built-in
call ``tool.call(query="...")`` anywhere, else (after ``<|python_tag|>``) code for the
code interpreter. Where llama-models raises (a JSON call without name or parameters, a
non-literal pythonic argument, a built-in called without arguments), herd keeps the
reply as content. Differences, on purpose: every call of a pythonic list is returned
(llama-models keeps the first); ``<function=...>`` arguments that llama-models' regex
cuts short (nested objects, apostrophes) are read as JSON; a JSON call may give
``"arguments"`` instead of ``"parameters"``; ``code_interpreter`` called in a custom
format keeps its argument as ``code`` (llama-models renames it ``query``).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from herd.tokenizer.messages import BUILTIN_TOOLS, ToolCall, ToolPromptFormat, new_call_id

_BUILTIN_CALL = re.compile(r'\b(?P<name>\w+)\.call\(query="(?P<query>[^"]*)"\)')
_FUNCTION_TAG = re.compile(r"<function=(?P<name>[^}]+)>(?P<args>{.*?})")
_QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")

Parsed = list[tuple[str, dict[str, Any]]]


# -- writing ------------------------------------------------------------------------------


def python_literal(value: Any) -> str:
    """``value`` as Llama 3.2 writes a pythonic call argument."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # "text", escaped only where needed
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{python_literal(str(k))}: {python_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ValueError(f"cannot write {type(value).__name__} as a pythonic tool-call argument")


def encode_tool_call(call: ToolCall, fmt: ToolPromptFormat | str = ToolPromptFormat.json) -> str:
    """The text of ``call`` in an assistant message (built-in tools have one fixed form)."""
    name, args = call.tool_name, call.arguments
    if name in _QUERY_TOOLS:
        if "query" not in args:
            raise ValueError(f"built-in tool {name} needs a 'query' argument, got {sorted(args)}")
        return f'{name}.call(query="{args["query"]}")'
    if name == "code_interpreter":
        if "code" not in args:
            raise ValueError(f"code_interpreter needs a 'code' argument, got {sorted(args)}")
        return args["code"]
    fmt = ToolPromptFormat(fmt)
    if fmt is ToolPromptFormat.json:
        return json.dumps({"type": "function", "name": name, "parameters": args})
    if fmt is ToolPromptFormat.function_tag:
        return f"<function={name}>{json.dumps(args)}</function>"
    return "[" + name + "(" + ", ".join(f"{k}={python_literal(v)}" for k, v in args.items()) + ")]"


# -- reading ------------------------------------------------------------------------------


def _function_tags(content: str) -> Parsed | None:
    """``<function=name>{json}`` tags; None when there is none or the first cannot be read
    (llama-models then goes on to look for a built-in call)."""
    calls: Parsed = []
    for m in _FUNCTION_TAG.finditer(content):
        args = _loads(m.group("args").replace("'", '"'))  # llama-models' reading first
        if not isinstance(args, dict):
            args = _json_object_at(content, m.start("args"))
        if isinstance(args, dict):
            calls.append((m.group("name"), args))
        elif not calls:
            return None
    return calls or None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _json_object_at(content: str, start: int) -> dict | None:
    try:
        obj, _ = json.JSONDecoder().raw_decode(content, start)
    except (json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _json_call(content: str) -> Parsed | None:
    """A reply that is one JSON object ``{"name", "parameters"}``."""
    obj = _loads(content)
    if not isinstance(obj, dict) or not (obj.get("type") == "function" or "name" in obj):
        return None
    name = obj.get("name")
    args = obj.get("parameters", obj.get("arguments"))
    if isinstance(args, str):
        args = _loads(args)
    if not isinstance(name, str) or not isinstance(args, dict):
        return []  # shaped like a call but unusable: the reply stays content
    return [(name, args)]


def _python_list(content: str) -> Parsed | None:
    """A reply that is a Python list of calls with keyword arguments: ``[f(a=1), g()]``."""
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        return None
    node = tree.body[0].value
    if not isinstance(node, ast.List) or not node.elts:
        return None
    calls: Parsed = []
    for call in node.elts:
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)) or call.args:
            return None
        args: dict[str, Any] = {}
        for kw in call.keywords:
            if kw.arg is None:  # **kwargs: a call list, but not one we can read
                return []
            try:
                args[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                return []  # a call list with a non-literal argument: the reply stays content
        calls.append((call.func.id, args))
    return calls


def _custom_calls(content: str) -> Parsed | None:
    """Custom-format calls; None when the reply is not in a custom format (then built-in
    calls are looked for), [] when it is but holds no usable call."""
    if _FUNCTION_TAG.search(content):
        return _function_tags(content)
    json_calls = _json_call(content)
    return json_calls if json_calls is not None else _python_list(content)


def parse_tool_calls(content: str, *, python_tag: bool) -> list[ToolCall]:
    """Tool calls in an assistant reply (already stripped of header, ``<|python_tag|>``
    and end token); ``python_tag`` says whether the reply began with that tag."""
    calls = _custom_calls(content)
    if calls is not None:
        out = []
        for name, args in calls:
            if name in BUILTIN_TOOLS:
                # A built-in tool called in the custom-tool format: its one argument.
                if not args:
                    continue
                key = "code" if name == "code_interpreter" else "query"
                args = {key: next(iter(args.values()))}
            out.append(ToolCall(new_call_id(), name, args))
        return out
    m = _BUILTIN_CALL.search(content)
    if m:
        return [ToolCall(new_call_id(), m.group("name"), {"query": m.group("query")})]
    if python_tag:
        return [ToolCall(new_call_id(), "code_interpreter", {"code": content})]
    return []
