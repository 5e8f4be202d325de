"""JavaScript/TypeScript rules: dynamic code, child processes, DOM XSS, weak randomness, buffers, TLS."""

from herd.safety.code_shield.rules import context
from herd.safety.code_shield.rules.base import rule

RULES = [
    rule("js-eval", "CWE-95", "warning", "eval/new Function/setTimeout with a string of code built at run time.",
         r"(?<![\w.])(?:eval|evalScript)\s*\(\s*(?![\"'`]\s*[^\"'`$]*[\"'`]\s*\))[^)\s]"
         r"|\bnew\s+Function\s*\((?!\s*\))|\bset(?:Timeout|Interval)\s*\(\s*[\"'`]"),
    rule("js-child-process", "CWE-95", "warning", "child_process exec with a non-literal command: command injection.",
         r"\b(?:exec|execSync|spawn|spawnSync|execFile)\s*\(\s*(?![\"'][^\"']*[\"']\s*[,)])[^)\s]",
         unless=r"\.exec\s*\(\s*\w+\s*\)\s*[;)]?\s*$",
         keep_if=lambda code, m: not context.is_constant_string(context.nth_arg(code, m, 0) or "", code)),
    rule("js-non-literal-require", "CWE-95", "warning", "require() of a computed module name.",
         r"(?<![\w.])require\s*\(\s*(?![\"'`][^\"'`$]*[\"'`]\s*\))[^)\s]",
         keep_if=lambda code, m: not context.is_base_plus_literal(context.nth_arg(code, m, 0) or "")),
    rule("js-inner-html", "CWE-79", "warning", "HTML inserted from data: cross-site scripting.",
         r"dangerouslySetInnerHTML|\.(?:innerHTML|outerHTML)\s*[+]?=\s*(?![\"'`][^\"'`$]*[\"'`]\s*;)"
         r"|document\.write(?:ln)?\s*\(\s*(?![\"'`])"),
    rule("js-weak-random", "CWE-338", "warning", "Math.random/crypto.pseudoRandomBytes are not secure; use crypto.ran"
                                                 "domBytes.",
         r"\bMath\.random\s*\(|\bpseudoRandomBytes\s*\(",
         keep_if=lambda code, m: m.group().startswith("pseudo") or context.in_secret_context(code, m)),
    rule("js-unencrypted-fetch", "CWE-319", "warning", "A resource is fetched over plain http.",
         r"\b(?:fetch|axios\.\w+|http\.get|\$\.(?:get|post|ajax)|open)\s*\(\s*[\"'`]http://(?!localhost|127\.0\.0\.1)"),
    rule("js-postmessage-origin", "CWE-345", "warning", "postMessage to any origin ('*').",
         r"\.postMessage\s*\([^;]*,\s*[\"']\*[\"']",
         # A string literal message discloses nothing the page source does not.
         keep_if=lambda code, m: not context.is_literal(context.nth_arg(code, m, 0) or "")),
    rule("js-onmessage-origin", "CWE-940", "warning", "A message handler that does not check event.origin.",
         r"addEventListener\s*\(\s*[\"']message[\"']|\bonmessage\s*=", unless=r"\.origin\b"),
    rule("js-buffer-noassert", "CWE-119", "warning", "Buffer read/write with noAssert skips bounds checks.",
         r"\.(?:read|write)\w*\s*\([^)]*,\s*true\s*\)", unless=r"\bnew\s+DataView"),
    rule("js-new-buffer", "CWE-770", "warning", "new Buffer() is deprecated and may expose memory; use Buffer.from/al"
                                                "loc.",
         r"\bnew\s+Buffer\s*\("),
    rule("js-unsafe-alloc", "CWE-908", "warning", "Buffer.allocUnsafe returns uninitialized memory.",
         r"\bBuffer\.allocUnsafe(?:Slow)?\s*\("),
    rule("js-nonliteral-regexp", "CWE-185", "warning", "RegExp built from a variable: regex denial of service.",
         r"\bnew\s+RegExp\s*\(\s*(?![\"'`/])"),
    rule("js-path-traversal", "CWE-22", "warning", "A filesystem call on a computed path.",
         r"\bfs\.\w+(?:Sync)?\s*\(\s*(?![\"'`][^\"'`$]*[\"'`])[^)\s]",
         keep_if=lambda code, m: not context.is_base_plus_literal(context.nth_arg(code, m, 0) or "")),
    rule("js-timing-compare", "CWE-208", "warning", "A secret compared with ===: a timing attack; use crypto.timingSa"
                                                    "feEqual.",
         r"\b\w*(?:password|secret|token|hash|signature|digest|hmac)\w*\s*[!=]==?\s*\w", flags=2),
    rule("js-mustache-escape-off", "CWE-79", "warning", "Template escaping is disabled.",
         r"escapeMarkup\s*=\s*false|\bnoEscape\s*:\s*true|\.escape\s*=\s*function\s*\(\s*\w*\s*\)\s*\{\s*return"),
    rule("js-tls-reject-off", "CWE-295", "warning", "TLS certificate verification is disabled.",
         r"rejectUnauthorized\s*:\s*false|NODE_TLS_REJECT_UNAUTHORIZED\s*=\s*[\"']?0"),
    rule("js-weak-hash", "CWE-328", "warning", "MD5/SHA-1 are broken hashes.",
         r"createHash\s*\(\s*[\"'](?:md5|sha1)[\"']"),
]
