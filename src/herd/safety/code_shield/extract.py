"""Finding code in model output: fenced Markdown blocks and ``<|python_tag|>`` tool calls.

A fence's info string names the language (```` ```python ````); an unnamed fence, or text after
``<|python_tag|>`` (Llama 3.1's code-interpreter call, which runs Python), is typed by
inference or, for the python tag, as Python. An unclosed fence at the end of the text (a stream
still being generated) counts: its code so far is returned with ``complete=False``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from herd.safety.code_shield.language import normalize

PYTHON_TAG = "<|python_tag|>"
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([\w+#.\-]*)[^\n]*\n", re.MULTILINE)
_END_TOKENS = ("<|eom_id|>", "<|eot_id|>", "<|end_of_text|>")


@dataclass(frozen=True)
class CodeBlock:
    code: str
    language: str | None  # normalized, or None when not stated
    start: int  # offset of the code in the text
    complete: bool = True


def extract_code(text: str) -> list[CodeBlock]:
    """Every code block in ``text``, in order."""
    blocks: list[CodeBlock] = []
    pos = 0
    while True:
        m = _FENCE.search(text, pos)
        if m is None:
            break
        fence, tag = m.group(1), m.group(2)
        close = re.compile(r"^[ \t]*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$", re.MULTILINE)
        end = close.search(text, m.end())
        body_end = end.start() if end else len(text)
        blocks.append(CodeBlock(text[m.end():body_end], normalize(tag) if tag else None, m.end(), end is not None))
        if end is None:
            break
        pos = end.end()
    tag_at = text.find(PYTHON_TAG)
    if tag_at != -1:
        start = tag_at + len(PYTHON_TAG)
        body = text[start:]
        done = False
        for tok in _END_TOKENS:
            if tok in body:
                body, done = body[: body.index(tok)], True
        if not any(b.start <= start < b.start + len(b.code) for b in blocks):
            blocks.append(CodeBlock(body, "python", start, done))
    return blocks
