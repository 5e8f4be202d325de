"""What a scan returns: findings with position, CWE and severity, and the treatment they imply.

The treatment policy is Code Shield's: any error-severity finding blocks the code, any other
finding warns, no finding allows it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEVERITIES = ("error", "warning", "advice")


@dataclass(frozen=True)
class Finding:
    """One insecure pattern found at ``line`` (1-based) and ``column`` (1-based) of the scanned code."""

    rule: str
    cwe: str
    severity: str
    message: str
    language: str
    line: int
    column: int
    snippet: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanResult:
    """The findings for one piece of code and the action they call for."""

    language: str | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def treatment(self) -> str:
        return treatment_of(self.findings)

    @property
    def is_insecure(self) -> bool:
        return bool(self.findings)

    def to_dict(self) -> dict:
        return {"language": self.language, "treatment": self.treatment,
                "findings": [f.to_dict() for f in self.findings]}


def treatment_of(findings: list[Finding]) -> str:
    """"block" if any finding is an error, "warn" if there are findings, else "allow"."""
    if any(f.severity == "error" for f in findings):
        return "block"
    return "warn" if findings else "allow"
