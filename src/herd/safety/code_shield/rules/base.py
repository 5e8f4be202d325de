"""A pattern rule: one regular expression over source text, with its CWE, severity and message.

Pattern rules are the fast path (one compiled regex per rule, run line-independent over the whole
text so a call split over lines still matches). ``unless`` suppresses a match when the same
statement window also matches it (e.g. ``yaml.load`` with ``SafeLoader``). ``hints`` are plain
substrings one of which must occur for the rule to run at all: a prescan that skips the regex
(and its backtracking) on the many snippets that cannot match. ``keep_if`` is a predicate over
(code, match) for what a regex cannot say (see ``rules.context``): the match is reported only if it
returns True (e.g. weak randomness only where it makes a secret).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rule:
    id: str
    cwe: str
    severity: str
    message: str
    pattern: str
    unless: str | None = None
    flags: int = 0
    hints: tuple[str, ...] = ()
    keep_if: Callable[[str, re.Match], bool] | None = field(default=None, compare=False)
    regex: re.Pattern = field(init=False, repr=False, compare=False)
    unless_regex: re.Pattern | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.severity not in ("error", "warning", "advice"):
            raise ValueError(f"rule {self.id}: severity must be error|warning|advice, got {self.severity!r}")
        if not re.fullmatch(r"CWE-\d+", self.cwe):
            raise ValueError(f"rule {self.id}: cwe must look like 'CWE-78', got {self.cwe!r}")
        object.__setattr__(self, "regex", re.compile(self.pattern, self.flags | re.MULTILINE))
        object.__setattr__(self, "unless_regex", re.compile(self.unless, re.MULTILINE) if self.unless else None)


def rule(id: str, cwe: str, severity: str, message: str, pattern: str, unless: str | None = None,
         flags: int = 0, hints: tuple[str, ...] = (),
         keep_if: Callable[[str, re.Match], bool] | None = None) -> Rule:
    return Rule(id, cwe, severity, message, pattern, unless, flags, hints, keep_if)
