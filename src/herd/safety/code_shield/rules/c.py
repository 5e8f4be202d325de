"""C rules (also run on C++): unbounded copies, weak crypto, weak randomness, unsafe temp files."""

from herd.safety.code_shield.rules import context
from herd.safety.code_shield.rules.base import rule

CALL = r"(?<![\w.>:])"  # a bare call, not a method or a longer name ending the same way

RULES = [
    rule("c-gets", "CWE-242", "error", "gets() cannot bound its input: a buffer overflow. Use fgets().",
         CALL + r"gets\s*\("),
    rule("c-strcpy", "CWE-120", "error", "strcpy() copies without a bound: a buffer overflow risk. Use strncpy/strlcp"
                                         "y.",
         CALL + r"(?:strcpy|wcscpy|_mbscpy|lstrcpy[AW]?|StrCpy)\s*\(",
         keep_if=lambda code, m: not context.is_bounded_array_copy(code, m)),
    rule("c-strcat", "CWE-120", "warning", "strcat() appends without a bound: a buffer overflow risk. Use strncat/str"
                                           "lcat.",
         CALL + r"(?:strcat|wcscat|lstrcat[AW]?|StrCat)\s*\(",
         # Appending a literal adds a known length (the peer's rule, too, wants an identifier source).
         keep_if=lambda code, m: not context.is_literal(context.nth_arg(code, m, 1) or "")),
    rule("c-sprintf", "CWE-120", "warning", "sprintf() writes without a bound: a buffer overflow risk. Use snprintf.",
         CALL + r"v?sprintf\s*\(\s*[^,;]+,\s*(?:\"[^\"]*%s|(?![\s\"]))"),
    rule("c-scanf-unbounded-string", "CWE-119", "warning",
         "scanf-family %s without a width can overflow the destination buffer.",
         CALL + r"(?:v?f|v?s)?w?scanf(?:_s)?\s*\([^;]*?\"[^\"\n]*%l?s", hints=('scanf',)),
    rule("c-snprintf-return-as-offset", "CWE-119", "warning",
         "snprintf's return value is the length it wanted, not what it wrote; using it as an offset can overrun.",
         r"\b\w+\s*\+?=\s*(?:\w+::)?v?snprintf\s*\("),
    rule("c-memcpy-to-stack-buffer", "CWE-121", "warning",
         "memcpy/strcpy into a fixed-size array: check the length against the buffer's size.",
         r"\b\w+\s+(\w+)\s*\[[^\]\n;]+\]\s*;[\s\S]{0,600}?"
         r"\b(?:memcpy|memmove|strcpy|strncpy)\s*\(\s*\1\b", hints=('memcpy', 'memmove', 'strcpy', 'strncpy')),
    rule("c-alloc-size-overflow", "CWE-680", "advice",
         "A multiplication inside an allocation size can overflow and allocate too little; check it or use calloc.",
         CALL + r"(?:malloc|realloc|alloca|_alloca)\s*\([^;()]*(?:\([^;()]*\)[^;()]*)*\w\s*\*\s*\w", hints=('alloc',)),
    rule("c-free-non-heap", "CWE-590", "warning", "free() of a pointer to a stack array: memory not on the heap.",
         r"\b(?:char|int|uint8_t|unsigned char|double|float)\s+(\w+)\s*\[[^\]]*\]\s*;[\s\S]{0,400}?\bfree\s*\(\s*&?\1"
         r"\s*\)", hints=('free',)),
    rule("c-system", "CWE-78", "warning",
         "system()/popen() with a non-literal command: command injection if any part comes from input.",
         CALL + r"(?:system|popen|_popen|_wsystem)\s*\(\s*(?!\")[^)\s]"),
    rule("c-weak-hash", "CWE-328", "warning", "MD2/MD4/MD5/SHA-1 are broken hashes; use SHA-256 or better.",
         r"(?:\b(?:MD[245]|SHA1?)_(?:Init|Update|Final)|\bEVP_(?:md[245]|sha1)|\b(?:MD[245]|SHA1))\s*\(",
         hints=("MD", "SHA", "md", "sha"), keep_if=context.is_c_call),
    rule("c-weak-cipher", "CWE-1240", "warning", "DES, 3DES and Blowfish are weak ciphers; use AES-GCM or ChaCha20-Po"
                                                 "ly1305.",
         r"\b(?:DES_\w+|EVP_des_\w+|BF_\w+|EVP_bf_\w+)\s*\(", hints=('DES', 'des', 'BF_', 'bf_'),
         keep_if=context.is_c_call),
    rule("c-ecb-mode", "CWE-323", "error", "ECB mode is deterministic and unauthenticated; do not use it.",
         r"\b(?:EVP_\w+_ecb|\w+_ecb_encrypt|AES_ecb_encrypt)\s*\(", hints=('ecb',), keep_if=context.is_c_call),
    rule("c-unauthenticated-encryption", "CWE-347", "warning",
         "CBC/CTR/CFB/OFB without a MAC is unauthenticated encryption; prefer an AEAD mode (GCM).",
         r"\bEVP_\w+_(?:cbc|ctr|cfb\d*|ofb)\s*\(", hints=('EVP_',), keep_if=context.is_c_call),
    rule("c-weak-curve", "CWE-331", "warning", "The NIST P-192 curve is too weak.",
         r"\bNID_X9_62_prime192v1\b|\bsecp192r1\b"),
    rule("c-weak-prng", "CWE-338", "warning", "rand()/random() are not cryptographically secure.",
         CALL + r"(?:rand|random|drand48|lrand48)\s*\(\s*\)", keep_if=context.in_secret_context),
    rule("c-fixed-seed", "CWE-335", "warning", "A PRNG seeded with a constant produces a predictable sequence.",
         CALL + r"(?:srand|srandom|srand48)\s*\(\s*\d+\s*\)", keep_if=context.in_secret_context),
    rule("c-insecure-tempfile", "CWE-377", "warning",
         "tmpnam/tempnam/mktemp create a name another process can take first; use mkstemp.",
         CALL + r"(?:tmpnam|tempnam|mktemp|_mktemp)\s*\("),
    rule("c-strtok", "CWE-676", "advice", "strtok() keeps hidden state and is not thread-safe; use strtok_r.",
         CALL + r"strtok\s*\("),
    rule("c-getpw", "CWE-477", "warning", "getpw() can overflow its buffer and is obsolete; use getpwuid.",
         CALL + r"getpw\s*\("),
    rule("c-hardcoded-key", "CWE-798", "warning", "A key or password is a string literal in the code.",
         r"\b(?:unsigned\s+)?char\s+\w*(?:key|password|passwd|secret)\w*\s*\[[^\]]*\]\s*=\s*\"[^\"]{4,}\"",
         flags=2, hints=('key', 'KEY', 'Key', 'pass', 'PASS', 'Pass', 'secret', 'SECRET', 'Secret')),
]
