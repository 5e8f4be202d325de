"""Language names and inference: the name a fence or caller gives, or a guess from the code itself.

The guess scores a few strong markers per language (``#include``, ``<?php``, ``fn main``, ``using
System``, ``def``/``import`` …); ties or no marker give ``None`` and the scanner then runs every
rule set, as Code Shield does when no language is given.
"""

from __future__ import annotations

import re

from herd.safety.code_shield.rules import LANGUAGES

ALIASES = {
    "c": "c", "h": "c", "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp", "hpp": "cpp",
    "cs": "csharp", "c#": "csharp", "csharp": "csharp", "java": "java", "kotlin": None,
    "js": "javascript", "javascript": "javascript", "jsx": "javascript", "ts": "javascript",
    "typescript": "javascript", "tsx": "javascript", "node": "javascript", "mjs": "javascript",
    "php": "php", "py": "python", "python": "python", "python3": "python", "rs": "rust", "rust": "rust",
}

_MARKERS: dict[str, list[tuple[str, int]]] = {
    "php": [(r"<\?php", 10), (r"\$_(?:GET|POST|REQUEST|SERVER)\b", 5), (r"\$\w+\s*=", 2), (r"->\w+\(", 1),
            (r"\bfunction\s+\w+\s*\(\s*\$", 4), (r"\becho\b", 1)],
    "rust": [(r"\bfn\s+\w+\s*(?:<[^>]*>)?\s*\(", 4), (r"\blet\s+mut\b", 5), (r"\buse\s+\w+::", 4), (r"\w!\s*\(", 2),
             (r"\bimpl\b", 3), (r"->\s*(?:Result|Option|Self|Vec|String|&)", 3), (r"\bpub\s+(?:fn|struct)\b", 3)],
    "cpp": [(r"\bstd::", 5), (r"#include\s*<(?:iostream|vector|string|memory|map|algorithm)>", 6), (r"\bcout\s*<<", 4),
            (r"\btemplate\s*<", 4), (r"\bnamespace\s+\w+\s*\{", 2), (r"\bclass\s+\w+\s*(?::\s*public)?", 1),
            (r"::\w+\(", 1), (r"\bnew\s+\w+\s*\[", 2), (r"\bauto_ptr\b|\bunique_ptr\b", 3)],
    "c": [(r"#include\s*<\w+\.h>", 4), (r"\bint\s+main\s*\(", 2), (r"\b(?:malloc|free|printf|strcpy|memcpy)\s*\(", 2),
          (r"\bstruct\s+\w+\s*\*", 2), (r"\bchar\s*\*\s*\w+", 2), (r"#define\b", 1)],
    "csharp": [(r"\busing\s+System\b", 8), (r"\bnamespace\s+[\w.]+", 2), (r"\bpublic\s+(?:async\s+)?\w+(?:<[^>]*>)?\s"
                                                                          r"+\w+\s*\(", 1),
               (r"\bstring\b", 1), (r"\bvar\s+\w+\s*=", 2), (r"\{\s*get;", 5), (r"\bConsole\.Write", 4),
               (r"\[(?:HttpPost|HttpGet|Test|Fact)\]", 4)],
    "java": [(r"\bimport\s+java\.", 8), (r"\bpublic\s+class\b", 3), (r"\bSystem\.out\.print", 5), (r"\bString\[\]", 3),
             (r"@Override\b", 4), (r"\bprivate\s+final\b", 2), (r"\bthrows\s+\w+", 3), (r"\bnew\s+\w+<>\(", 3)],
    "javascript": [(r"\bfunction\s*\w*\s*\((?!\s*\$)", 2), (r"\bfunction\s+\w+\s*\([^$)]*\)\s*\{", 2),
                   (r"\bconst\s+\w+\s*=", 2), (r"\blet\s+\w+\s*=", 1), (r"=>", 2),
                   (r"\brequire\s*\(\s*['\"]", 5), (r"\bconsole\.log\s*\(", 5), (r"\bdocument\.|\bwindow\.", 4),
                   (r"\bmodule\.exports\b|\bexport\s+(?:default|const|function)", 5), (r"===", 2)],
    "python": [(r"^\s*def\s+\w+\s*\(.*\)\s*(?:->\s*[^:]+)?:\s*"
                r"$", 5), (r"^\s*(?:import\s+\w+|from\s+[\w.]+\s+import)\b", 4),
               (r"\bself\.", 2), (r"^\s*(?:elif|except\b.*:|with\s.*:"
                                  r")", 3), (r"\bprint\s*\(", 1), (r"\bNone\b|\bTrue\b", 1),
               (r"^\s*class\s+\w+(?:\([^)]*\))?:\s*$", 4)],
}
_COMPILED = {lang: [(re.compile(p, re.MULTILINE), w) for p, w in marks] for lang, marks in _MARKERS.items()}


def normalize(language: str | None) -> str | None:
    """Map a fence tag or user-given name to one of LANGUAGES; unknown names give None."""
    if language is None:
        return None
    name = language.strip().lower()
    if name in LANGUAGES:
        return name
    return ALIASES.get(name)


def infer_language(code: str) -> str | None:
    """The most likely language of ``code``, or None when no language clearly wins."""
    scores = {lang: sum(w for rx, w in marks if rx.search(code)) for lang, marks in _COMPILED.items()}
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (best, top), (_, second) = ranked[0], ranked[1]
    if top < 3 or top == second:
        return None
    if best == "c" and scores["cpp"] >= 3:  # C++ code is C code plus markers; prefer the richer rule set
        return "cpp"
    return best
