"""The one interface the server and the agent loop call: input -> ``Verdict``.

A shield looks at text (a user prompt, a tool result, or model output, possibly partial while it
streams) and returns a verdict: categories it found, scores in [0, 1] and a recommended action,
"block", "warn" or "allow". ``Shields`` runs several and keeps the strictest action. Concrete
shields: ``CodeShieldShield`` here; ``LlamaGuardShield`` (herd.safety.llama_guard) and
``PromptGuardShield`` (herd.safety.prompt_guard).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

ACTIONS = ("allow", "warn", "block")  # in order of strictness


@dataclass
class Verdict:
    action: str = "allow"
    categories: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    shield: str = ""
    reason: str = ""
    details: Any = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Verdict.action must be one of {ACTIONS}, got {self.action!r}")

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    def to_dict(self) -> dict:
        details = self.details.to_dict() if hasattr(self.details, "to_dict") else self.details
        return {"action": self.action, "categories": self.categories, "scores": self.scores,
                "shield": self.shield, "reason": self.reason, "details": details}


@runtime_checkable
class Shield(Protocol):
    """Anything with ``check(text, role=...) -> Verdict``; role is "user" or "assistant"."""

    name: str

    def check(self, text: str, role: str = "assistant") -> Verdict: ...


def strictest(verdicts: Sequence[Verdict]) -> Verdict:
    """Merge verdicts: the strictest action, the union of categories, every score (prefixed by shield)."""
    if not verdicts:
        return Verdict()
    top = max(verdicts, key=lambda v: ACTIONS.index(v.action))
    cats: list[str] = []
    scores: dict[str, float] = {}
    for v in verdicts:
        cats += [c for c in v.categories if c not in cats]
        scores.update({f"{v.shield}.{k}" if v.shield else k: s for k, s in v.scores.items()})
    return Verdict(top.action, cats, scores, top.shield, top.reason, [v.to_dict() for v in verdicts])


class Shields:
    """Several shields as one: every shield checks, the strictest verdict wins."""

    name = "shields"

    def __init__(self, shields: Sequence[Shield]) -> None:
        self.shields = list(shields)

    def check(self, text: str, role: str = "assistant") -> Verdict:
        return strictest([s.check(text, role) for s in self.shields])

    def stream(self) -> Shields:
        """Per-stream checkers of the members that have one (see ``guarded_stream``)."""
        return Shields([s.stream() if hasattr(s, "stream") else s for s in self.shields])


class CodeShieldShield:
    """Code Shield over the code blocks in a text (model output) or over raw code.

    Categories are the CWE ids found; the score is 1.0 per CWE. ``raw_code=True`` scans the whole
    text as code (language inferred) instead of looking for fenced blocks and python_tag calls.
    """

    name = "code_shield"

    def __init__(self, raw_code: bool = False, language: str | None = None) -> None:
        self.raw_code, self.language = raw_code, language

    def check(self, text: str, role: str = "assistant") -> Verdict:
        from herd.safety.code_shield import scan, scan_output

        results = [scan(text, self.language)] if self.raw_code else scan_output(text)
        findings = [f for r in results for f in r.findings]
        return _code_verdict(self.name, findings, [r.to_dict() for r in results])

    def stream(self) -> _StreamingCodeCheck:
        """A checker for one growing output (see ``code_shield.streaming``); ``raw_code`` is not streamed."""
        return _StreamingCodeCheck(self.name) if not self.raw_code else self  # type: ignore[return-value]


def _code_verdict(name: str, findings: list, details: object) -> Verdict:
    from herd.safety.code_shield.findings import treatment_of

    cwes = sorted({f.cwe for f in findings})
    reason = "; ".join(f"{f.rule} ({f.cwe}, {f.severity}) at line {f.line}" for f in findings[:5])
    return Verdict(treatment_of(findings), cwes, {c: 1.0 for c in cwes}, name, reason, details)


class _StreamingCodeCheck:
    def __init__(self, name: str) -> None:
        from herd.safety.code_shield.streaming import StreamingCodeShield

        self.name, self._scanner = name, StreamingCodeShield()

    def check(self, text: str, role: str = "assistant") -> Verdict:
        findings = self._scanner.findings(text)
        return _code_verdict(self.name, findings, [f.to_dict() for f in findings])
