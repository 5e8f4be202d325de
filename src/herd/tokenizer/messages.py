"""Dialog data types: messages, tool calls and why a reply stopped."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

ROLES = ("system", "user", "assistant", "ipython", "tool")  # "tool" is an alias of "ipython"
BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "photogen", "code_interpreter")


class StopReason(str, Enum):
    end_of_turn = "end_of_turn"  # <|eot_id|>
    end_of_message = "end_of_message"  # <|eom_id|>: a tool call waits for its result
    out_of_tokens = "out_of_tokens"


class ToolPromptFormat(str, Enum):
    """How custom tool calls are written: Llama 3.1 JSON, 3.1 ``<function=...>`` tags,
    or Llama 3.2's pythonic list."""

    json = "json"
    function_tag = "function_tag"
    python_list = "python_list"


def new_call_id() -> str:
    return str(uuid.uuid4())


@dataclass
class ToolCall:
    call_id: str
    tool_name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolCall:
        """From herd's form ``{"call_id", "tool_name", "arguments"}`` or OpenAI's
        ``{"id", "function": {"name", "arguments": dict or JSON text}}``."""
        if "function" in d:
            fn = d["function"]
            name, args, call_id = fn.get("name"), fn.get("arguments", {}), d.get("id")
        else:
            name, args, call_id = d.get("tool_name", d.get("name")), d.get("arguments", {}), d.get("call_id")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"tool call {name!r}: arguments are not JSON: {e}") from None
        if not isinstance(name, str) or not isinstance(args, dict):
            raise ValueError(f"tool call needs a name and a dict of arguments, got {d!r}")
        return cls(call_id=call_id or new_call_id(), tool_name=name, arguments=args)

    def to_dict(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "tool_name": self.tool_name, "arguments": self.arguments}


@dataclass
class Message:
    """One dialog turn. ``role`` is system, user, assistant or ipython (tool results;
    "tool" is accepted and written as ipython). ``context`` is llama-models' RAG
    context, appended to a user message."""

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: StopReason | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be str, got {type(self.content).__name__}")
        if self.stop_reason is not None:
            self.stop_reason = StopReason(self.stop_reason)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        """From a chat-data record ``{"role", "content", "tool_calls"?, "stop_reason"?}``;
        content may be None or a list of ``{"type": "text", "text"}`` parts."""
        content = d.get("content") or ""
        if isinstance(content, list):
            content = "".join(p["text"] if isinstance(p, dict) else str(p) for p in content)
        calls = [ToolCall.from_dict(c) for c in d.get("tool_calls") or []]
        return cls(d["role"], content, calls, d.get("stop_reason"), d.get("context"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.stop_reason is not None:
            out["stop_reason"] = self.stop_reason.value
        if self.context is not None:
            out["context"] = self.context
        return out
