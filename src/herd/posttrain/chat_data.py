"""Chat and preference records -> token ids with loss masks, in Llama 3's chat format.

SFT (``encode_sft``): a dialog becomes ``<|begin_of_text|>``, every message as
``herd.tokenizer.ChatFormat.encode_message`` writes it, then ``<|end_of_text|>`` (the
token-shard convention). The mask is 1 on the tokens the model learns to produce:
an assistant message's content, its tool calls (and ``<|python_tag|>``) and its end
token (``<|eot_id|>``, or ``<|eom_id|>`` when it waits for a tool result), so the model
learns when to stop. Everything else is 0: ``<|begin_of_text|>``, every header
(``<|start_header_id|>role<|end_header_id|>\\n\\n``, assistant ones included), system and
user turns, tool results (ipython) and ``<|end_of_text|>``. A record with ``tools``
gets Llama 3.1's tool instructions through ``prepare_dialog`` (masked, like any system
or user text).

Preferences (``encode_response``): the prompt dialog, then a response's messages. The
DPO mask is Llama 3's: only response *content* counts; headers, ``<|python_tag|>`` and
the end tokens are masked out of both the chosen and the rejected response, since both
share them and they carry no preference.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from herd.tokenizer import Tokenizer
from herd.tokenizer.chat_format import ChatFormat, Message, prepare_dialog


class ChatDataError(ValueError):
    """A malformed chat or preference record; the message names the file, line and field."""


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for every non-empty line of a JSON Lines file (``.gz`` too); ``where`` is ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise ChatDataError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChatDataError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(record, dict):
                raise ChatDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def parse_messages(raw: Any, where: str, field: str = "messages") -> list[Message]:
    """A list of ``Message`` from a record's ``field``; errors name ``where`` and the field."""
    if not isinstance(raw, list) or not raw:
        raise ChatDataError(f"{where}: {field!r} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or "role" not in m:
            raise ChatDataError(f"{where}: {field}[{i}] must be an object with a 'role'")
        try:
            out.append(Message.from_dict(m))
        except (ValueError, TypeError, KeyError) as e:
            raise ChatDataError(f"{where}: {field}[{i}]: {e}") from None
    return out


def dialog_from_record(record: dict[str, Any], where: str) -> list[Message]:
    """An SFT record ``{"messages": [...], "tools"?: [...]}`` as the messages to encode."""
    messages = parse_messages(record.get("messages"), where)
    if not any(m.role == "assistant" for m in messages):
        raise ChatDataError(f"{where}: 'messages' holds no assistant message: nothing to learn")
    tools = record.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise ChatDataError(f"{where}: 'tools' must be a list of tool definitions")
        try:
            messages = prepare_dialog(messages, custom_tools=tools)
        except (ValueError, TypeError, KeyError) as e:
            raise ChatDataError(f"{where}: tools: {e}") from None
    return messages


def encode_sft(fmt: ChatFormat, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
    """(ids, mask) of one dialog; mask 1 = a target (assistant content, tool calls, end token)."""
    tok = fmt.tokenizer
    ids, mask = [tok.bos_id], [0]
    for m in messages:
        piece = fmt.encode_message(m)
        header = len(fmt.encode_header(m.role))
        target = 1 if m.role == "assistant" else 0
        ids.extend(piece)
        mask.extend([0] * header + [target] * (len(piece) - header))
    ids.append(tok.eos_id)
    mask.append(0)
    return ids, mask


def encode_prompt(fmt: ChatFormat, prompt: Sequence[Message]) -> list[int]:
    """The prompt dialog without a generation header (each response brings its own)."""
    return fmt.encode_dialog_prompt(prompt, add_generation_prompt=False)


def encode_response(fmt: ChatFormat, prompt_ids: Sequence[int],
                    response: Sequence[Message]) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + response; mask 1 only on the response's content tokens
    (headers, ``<|python_tag|>``, ``<|eot_id|>`` / ``<|eom_id|>`` masked: Llama 3's DPO)."""
    tok = fmt.tokenizer
    special = {tok.python_tag_id, tok.eot_id, tok.eom_id}
    ids, mask = list(prompt_ids), [0] * len(prompt_ids)
    for m in response:
        piece = fmt.encode_message(m)
        header = len(fmt.encode_header(m.role))
        content = 1 if m.role == "assistant" else 0
        ids.extend(piece)
        mask.extend([0] * header + [0 if t in special else content for t in piece[header:]])
    return ids, mask


def load_sft_dialogs(path: str | Path, tokenizer: Tokenizer) -> list[tuple[list[int], list[int]]]:
    """Every dialog of an SFT JSON Lines file as (ids, mask)."""
    fmt = ChatFormat(tokenizer)
    return [encode_sft(fmt, dialog_from_record(rec, where)) for where, rec in read_jsonl(path)]
