"""Llama 3 tokenizer (tiktoken BPE + special tokens) and chat format.

>>> tok = Tokenizer.from_dir("path/to/Llama-3.2-1B-Instruct")
>>> ids = ChatFormat(tok).encode_dialog_prompt([Message("user", "Hello!")])
"""

from herd.tokenizer.chat_format import ChatFormat
from herd.tokenizer.messages import BUILTIN_TOOLS, Message, StopReason, ToolCall, ToolPromptFormat
from herd.tokenizer.system_prompts import (
    ToolDefinition,
    ToolParam,
    custom_tools_prompt,
    prepare_dialog,
    system_prompt,
)
from herd.tokenizer.tokenizer import (
    LLAMA3_PATTERN,
    SPECIAL_TOKEN_NAMES,
    StreamingDecoder,
    Tokenizer,
    TokenizerFileError,
)

__all__ = [
    "BUILTIN_TOOLS",
    "LLAMA3_PATTERN",
    "SPECIAL_TOKEN_NAMES",
    "ChatFormat",
    "Message",
    "StopReason",
    "StreamingDecoder",
    "ToolCall",
    "ToolDefinition",
    "ToolParam",
    "ToolPromptFormat",
    "Tokenizer",
    "TokenizerFileError",
    "custom_tools_prompt",
    "prepare_dialog",
    "system_prompt",
]
