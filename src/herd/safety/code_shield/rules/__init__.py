"""Rule sets per language; every language also gets the credential rules of ``secrets``."""

from __future__ import annotations

from herd.safety.code_shield.rules import c, cpp, csharp, java, javascript, php, python, rust, secrets
from herd.safety.code_shield.rules.base import Rule

LANGUAGES = ("c", "cpp", "csharp", "java", "javascript", "php", "python", "rust")

RULES: dict[str, list[Rule]] = {
    "c": c.RULES + secrets.RULES,
    "cpp": cpp.RULES + secrets.RULES,
    "csharp": csharp.RULES + secrets.RULES,
    "java": java.RULES + secrets.RULES,
    "javascript": javascript.RULES + secrets.RULES,
    "php": php.RULES + secrets.RULES,
    "python": python.RULES + secrets.RULES,
    "rust": rust.RULES + secrets.RULES,
}
PYTHON_FALLBACK: list[Rule] = python.FALLBACK_RULES

__all__ = ["LANGUAGES", "PYTHON_FALLBACK", "RULES", "Rule"]
