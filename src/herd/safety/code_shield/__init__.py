"""Code Shield: a static insecure-code detector for model output (C, C++, C#, Java, JavaScript, PHP,
Python, Rust), with Code Shield's treatment policy (error finding -> block, other -> warn)."""

from herd.safety.code_shield.extract import CodeBlock, extract_code
from herd.safety.code_shield.findings import Finding, ScanResult, treatment_of
from herd.safety.code_shield.language import infer_language
from herd.safety.code_shield.rules import LANGUAGES
from herd.safety.code_shield.scanner import scan


def scan_output(text: str) -> list[ScanResult]:
    """Scan every code block found in a model's output text; one result per block."""
    return [scan(b.code, b.language) for b in extract_code(text)]


__all__ = ["LANGUAGES", "CodeBlock", "Finding", "ScanResult", "extract_code", "infer_language", "scan",
           "scan_output", "treatment_of"]
