"""Python pattern rules.

``RULES`` always run (text facts: weak hashes, hard-coded secrets and nonces). ``FALLBACK_RULES``
approximate the call rules of ``herd.safety.code_shield.python_ast`` and run only when the code
does not parse (model output is often a fragment); when it parses, the AST pass decides instead,
knowing import aliases and whether an argument is a literal.
"""

from herd.safety.code_shield.rules import context
from herd.safety.code_shield.rules.base import rule

_NONLITERAL = r"\s*(?![\"'][^\"'\n]*[\"']\s*\)|\))"  # first argument not just a string literal

RULES = [
    rule("py-weak-hash", "CWE-328", "warning", "MD5/SHA-1 are broken hashes; use hashlib.sha256 or better.",
         r"\bhashlib\.(?:md5|sha1)\s*\(|\bhashlib\.new\s*\(\s*[\"'](?:md5|sha1|md4)[\"']"
         r"|\b(?:MD5|SHA|SHA1)\.new\s*\("),
    rule("py-hardcoded-secret", "CWE-798", "warning", "A password, key or token is a string literal in the code.",
         r"\b\w*(?:password|passwd|pwd|secret|api_?key|access_?key|auth_?token|private_?key)\w*"
         r"\s*[:=]\s*[\"'](?![\"'])[^\"'\s{}<>]{4,}[\"']", flags=2),
    rule("py-fixed-nonce", "CWE-323", "warning", "A nonce/IV that is a literal is reused across messages.",
         r"\b(?:nonce|iv)\s*=\s*b?[\"'][^\"']+[\"']|\b(?:nonce|iv)\s*=\s*bytes\s*\(\s*\d+\s*\)", flags=2),
]

FALLBACK_RULES = [
    rule("py-eval", "CWE-94", "warning", "eval() of a non-literal runs arbitrary code; use ast.literal_eval.",
         r"(?<![\w.])(?<!def )eval\s*\(" + _NONLITERAL),
    rule("py-exec", "CWE-94", "warning", "exec() of a non-literal runs arbitrary code.",
         r"(?<![\w.])(?<!def )exec\s*\(" + _NONLITERAL),
    rule("py-os-system", "CWE-78", "warning", "os.system/os.popen run a shell: command injection if input reaches it.",
         r"\bos\.(?:system|popen[234]?)\s*\(" + _NONLITERAL),
    rule("py-subprocess-shell", "CWE-78", "warning", "subprocess with shell=True: command injection if input reaches "
                                                     "it.",
         r"\b(?:subprocess\.)?(?:run|call|check_call|check_output|Popen|getoutput)\s*\([^;]*?shell\s*=\s*True"),
    rule("py-pickle", "CWE-502", "warning", "Unpickling untrusted data runs arbitrary code.",
         r"\b(?:c?pickle|dill|jsonpickle|marshal|shelve)\.(?:loads?|decode|Unpickler|open)\s*\("),
    rule("py-yaml-load", "CWE-502", "warning", "yaml.load without SafeLoader constructs arbitrary objects.",
         r"\byaml\.(?:load|load_all|unsafe_load|full_load)\s*\((?![^)]*Safe)"),
    rule("py-sql-format", "CWE-89", "error", "SQL built by string formatting: SQL injection. Pass parameters instead.",
         r"\.execute(?:many)?\s*\(\s*(?:f[\"']|[\"'][^\"']*[\"']\s*(?:%|\+|\.format\s*\()|\w+\s*\+)"),
    rule("py-weak-random", "CWE-338", "advice", "The random module is not cryptographically secure; use secrets.",
         r"\brandom\.(?!seed\b|SystemRandom\b)\w+\s*\(", keep_if=context.in_secret_context),
    rule("py-fixed-seed", "CWE-335", "warning", "A PRNG seeded with a constant is predictable.",
         r"\brandom\.seed\s*\(\s*\d+\s*\)", keep_if=context.in_secret_context),
    rule("py-mktemp", "CWE-377", "warning", "tempfile.mktemp returns a name another process can take; use mkstemp.",
         r"\btempfile\.mktemp\s*\("),
    rule("py-tls-unverified", "CWE-295", "warning", "TLS certificate verification is disabled.",
         r"\bverify\s*=\s*False\b|\bssl\._create_unverified_context\s*\(|\bCERT_NONE\b"),
]
