"""``scan(code, language=None)``: run a language's rules over code and apply the treatment policy.

Fast path: compiled regexes over the whole text (positions turned into line/column once, by
bisecting a table of line starts). Python also gets the syntax-tree pass of ``python_ast``
when the code parses. Without a language the code's language is inferred; when that fails every
rule set runs (duplicate findings at the same place and CWE are merged).
"""

from __future__ import annotations

import bisect

from herd.safety.code_shield import python_ast
from herd.safety.code_shield.findings import Finding, ScanResult
from herd.safety.code_shield.language import infer_language, normalize
from herd.safety.code_shield.rules import LANGUAGES, PYTHON_FALLBACK, RULES, Rule

_WINDOW = 600  # characters either side of a match that an ``unless`` pattern may look at


def _line_starts(code: str) -> list[int]:
    starts = [0]
    pos = code.find("\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = code.find("\n", pos + 1)
    return starts


def _run_rules(code: str, rules: list[Rule], language: str, starts: list[int], pos: int = 0) -> list[Finding]:
    """Findings of ``rules`` whose match starts at or after ``pos`` (the streaming scan's new text);
    ``unless`` and ``keep_if`` still see the whole code, so a partial scan decides as a full one."""
    out = []
    for r in rules:
        if r.hints and not any(code.find(h, pos) != -1 for h in r.hints):
            continue
        for m in r.regex.finditer(code, pos):
            if r.unless_regex is not None and r.unless_regex.search(
                    code, max(0, m.start() - _WINDOW), min(len(code), m.end() + _WINDOW)):
                continue
            if r.keep_if is not None and not r.keep_if(code, m):
                continue
            line = bisect.bisect_right(starts, m.start())
            col = m.start() - starts[line - 1] + 1
            end = code.find("\n", starts[line - 1])
            text = code[starts[line - 1]: end if end != -1 else len(code)].strip()
            out.append(Finding(r.id, r.cwe, r.severity, r.message, language, line, col, text[:200]))
    return out


def scan_language(code: str, language: str) -> list[Finding]:
    """All findings of one language's rules (Python: patterns, then the AST pass or its fallback)."""
    starts = _line_starts(code)
    findings = _run_rules(code, RULES[language], language, starts)
    if language == "python":
        deep = python_ast.analyze(code)
        findings += deep if deep is not None else _run_rules(code, PYTHON_FALLBACK, language, starts)
    return findings


def scan(code: str, language: str | None = None) -> ScanResult:
    """Scan ``code``; ``language`` is a name or alias (``"py"``, ``"c++"``, ``"ts"``), or None to infer it."""
    if not isinstance(code, str):
        raise TypeError(f"scan() needs code as a str, got {type(code).__name__}")
    lang = normalize(language)
    if language is not None and lang is None:
        raise ValueError(f"unknown language {language!r}; Code Shield knows {', '.join(LANGUAGES)}")
    if lang is None:
        lang = infer_language(code)
    if lang is not None:
        findings = scan_language(code, lang)
    else:
        seen, findings = set(), []
        for name in LANGUAGES:
            for f in scan_language(code, name):
                if (f.line, f.column, f.cwe) not in seen:
                    seen.add((f.line, f.column, f.cwe))
                    findings.append(f)
    findings.sort(key=lambda f: (f.line, f.column, f.rule))
    return ScanResult(lang, findings)
