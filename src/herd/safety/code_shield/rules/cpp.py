"""C++ rules: the C rules plus C++-only APIs."""

from herd.safety.code_shield.rules import c, context
from herd.safety.code_shield.rules.base import rule

RULES = c.RULES + [
    rule("cpp-auto-ptr", "CWE-665", "warning", "std::auto_ptr is deprecated and copies transfer ownership; use unique"
                                               "_ptr.",
         r"\bauto_ptr\s*<"),
    rule("cpp-fixed-seed-engine", "CWE-335", "warning", "A random engine seeded with a constant is predictable.",
         r"\b(?:mt19937(?:_64)?|default_random_engine|minstd_rand0?|ranlux\w+)\s+\w+\s*[({]\s*\d+\s*[)}]"
         r"|\.seed\s*\(\s*\d+\s*\)", keep_if=context.in_secret_context),
    rule("cpp-xxe", "CWE-611", "warning", "The XML parser resolves external entities (XXE).",
         r"XML_PARSE_NOENT|setFeature\s*\([^)]*external-general-entities[^)]*true|xmlSubstituteEntitiesDefault\s*\(\s*1"),
]
