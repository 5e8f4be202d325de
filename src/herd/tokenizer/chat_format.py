"""Llama 3.x dialogs as token ids, and assistant replies back into messages.

A dialog is ``<|begin_of_text|>`` then, per message,
``<|start_header_id|>ROLE<|end_header_id|>\\n\\n CONTENT <|eot_id|>`` (``<|eom_id|>`` for
an assistant message that stopped to wait for a tool), then an open assistant header.
Ids are those of llama-models' ``ChatFormat.encode_dialog_prompt``: each piece (role,
content, each tool call) is encoded on its own, and text that spells a special token is
encoded as plain text, never as the special token.
"""

from __future__ import annotations

from collections.abc import Sequence

from herd.tokenizer.messages import (
    BUILTIN_TOOLS,
    Message,
    StopReason,
    ToolCall,
    ToolPromptFormat,
)
from herd.tokenizer.system_prompts import (
    ToolDefinition,
    ToolParam,
    custom_tools_prompt,
    prepare_dialog,
    system_prompt,
)
from herd.tokenizer.tokenizer import Tokenizer
from herd.tokenizer.tool_calls import encode_tool_call, parse_tool_calls

__all__ = [
    "BUILTIN_TOOLS",
    "ChatFormat",
    "Message",
    "StopReason",
    "ToolCall",
    "ToolDefinition",
    "ToolParam",
    "ToolPromptFormat",
    "custom_tools_prompt",
    "prepare_dialog",
    "system_prompt",
]


class ChatFormat:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._headers: dict[str, list[int]] = {}

    def encode_header(self, role: str) -> list[int]:
        """``<|start_header_id|>role<|end_header_id|>\\n\\n`` ("tool" is written ipython)."""
        role = "ipython" if role == "tool" else role
        if role not in self._headers:
            tok = self.tokenizer
            self._headers[role] = [
                tok.start_header_id,
                *tok.encode(role),
                tok.end_header_id,
                *tok.encode("\n\n"),
            ]
        return list(self._headers[role])

    def encode_message(
        self, message: Message, tool_prompt_format: ToolPromptFormat | str = ToolPromptFormat.json
    ) -> list[int]:
        """Header, content, tool calls and the end token of one message."""
        tok = self.tokenizer
        ids = self.encode_header(message.role)
        is_assistant = message.role == "assistant"
        if is_assistant and message.tool_calls and message.tool_calls[0].tool_name == "code_interpreter":
            ids.append(tok.python_tag_id)
        ids.extend(tok.encode(message.content))
        if message.role == "user" and message.context is not None:
            ids.extend(tok.encode("\n\n"))
            ids.extend(tok.encode(message.context))
        if is_assistant:
            for call in message.tool_calls:
                ids.extend(tok.encode(encode_tool_call(call, tool_prompt_format)))
        eom = is_assistant and message.stop_reason == StopReason.end_of_message
        ids.append(tok.eom_id if eom else tok.eot_id)
        return ids

    def encode_dialog_prompt(
        self,
        messages: Sequence[Message],
        tool_prompt_format: ToolPromptFormat | str = ToolPromptFormat.json,
        *,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """``<|begin_of_text|>``, every message, then the assistant header the model
        completes (left out with ``add_generation_prompt=False``, e.g. for training)."""
        ids = [self.tokenizer.bos_id]
        for message in messages:
            ids.extend(self.encode_message(message, tool_prompt_format))
        if add_generation_prompt:
            ids.extend(self.encode_header("assistant"))
        return ids

    def render(
        self,
        messages: Sequence[Message],
        tool_prompt_format: ToolPromptFormat | str = ToolPromptFormat.json,
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt as text (special tokens spelled out), e.g. to compare with a chat template."""
        ids = self.encode_dialog_prompt(
            messages, tool_prompt_format, add_generation_prompt=add_generation_prompt
        )
        return self.tokenizer.decode(ids)

    def decode_assistant_message(self, tokens: Sequence[int], stop_reason: StopReason | str) -> Message:
        """The assistant message a generated reply holds (see
        :meth:`decode_assistant_message_from_content`)."""
        return self.decode_assistant_message_from_content(self.tokenizer.decode(tokens), stop_reason)

    def decode_assistant_message_from_content(self, content: str, stop_reason: StopReason | str) -> Message:
        """Split a reply into content and tool calls, as llama-models does: a leading
        assistant header and ``<|python_tag|>`` are dropped, a trailing ``<|eot_id|>`` /
        ``<|eom_id|>`` sets the stop reason, and a reply that is a tool call keeps no
        content. Text that is not a well-formed call stays content; nothing raises."""
        stop = StopReason(stop_reason)
        content = content.strip(" ")
        header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
        if content.startswith(header):
            content = content[len(header) :]
        python_tag = content.startswith("<|python_tag|>")
        if python_tag:
            content = content[len("<|python_tag|>") :]
        if content.endswith("<|eot_id|>"):
            content, stop = content[: -len("<|eot_id|>")], StopReason.end_of_turn
        elif content.endswith("<|eom_id|>"):
            content, stop = content[: -len("<|eom_id|>")], StopReason.end_of_message
        calls = parse_tool_calls(content, python_tag=python_tag)
        return Message("assistant", "" if calls else content, tool_calls=calls, stop_reason=stop)
