"""Code Shield for a growing text (model output as it streams), at a cost per delta that does not
grow with the output.

Rescanning the whole output after every token costs O(n) per token, O(n^2) per answer. Here a
closed code block is scanned once, in full (patterns and, for Python, the syntax tree); the block
still being written is scanned by the pattern rules only around its new text (matches starting in
the last ``context`` characters before it, rounded to a line start, which covers every multi-line
pattern, whose windows are at most 600 characters; its line starts are kept as it grows). The
rules' ``unless``/``keep_if`` checks still see the whole block, as in a full scan, and run only on
matches. Findings only accumulate as text is appended, so the verdict for a prefix is never weaker
than an earlier one's, and when the block closes its full scan replaces the partial findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from herd.safety.code_shield.extract import CodeBlock, extract_code
from herd.safety.code_shield.findings import Finding
from herd.safety.code_shield.language import infer_language
from herd.safety.code_shield.rules import LANGUAGES, PYTHON_FALLBACK, RULES
from herd.safety.code_shield.scanner import _run_rules, scan


@dataclass
class _OpenBlock:
    language: str | None
    scanned: int = 0  # characters of the block's code already scanned
    starts: list[int] = field(default_factory=lambda: [0])  # line starts of the code scanned so far
    found: dict[tuple[str, int, int], Finding] = field(default_factory=dict)


class StreamingCodeShield:
    """``findings(text)`` for successive prefixes of one output (each call's text extends the last)."""

    def __init__(self, context: int = 800) -> None:
        self.context = context
        self._closed: dict[int, list[Finding]] = {}
        self._open: dict[int, _OpenBlock] = {}

    def findings(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        for block in extract_code(text):
            if block.complete:
                if block.start not in self._closed:
                    self._closed[block.start] = scan(block.code, block.language).findings
                    self._open.pop(block.start, None)
                out += self._closed[block.start]
            else:
                out += self._scan_open(block)
        return out

    def _scan_open(self, block: CodeBlock) -> list[Finding]:
        code = block.code
        language = block.language or infer_language(code[:4000])
        state = self._open.get(block.start)
        if state is None or state.language != language:  # new block, or its language became clear
            state = self._open[block.start] = _OpenBlock(language)
        if len(code) > state.scanned:
            start = max(0, state.scanned - self.context)
            start = code.rfind("\n", 0, start) + 1 if start else 0
            nl = code.find("\n", state.scanned)
            while nl != -1:
                state.starts.append(nl + 1)
                nl = code.find("\n", nl + 1)
            for lang in [language] if language else list(LANGUAGES):
                rules = RULES[lang] + (PYTHON_FALLBACK if lang == "python" else [])
                for f in _run_rules(code, rules, lang, state.starts, pos=start):
                    state.found.setdefault((f.rule, f.line, f.column), f)
            state.scanned = len(code)
        return list(state.found.values())
