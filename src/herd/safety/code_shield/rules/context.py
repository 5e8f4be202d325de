"""Checks that look past a rule's regex match: where the code is, and what the call's arguments are.

A bare pattern cannot tell ``rand()`` picking a tile in a game from ``rand()`` making a session
token, a call from a C prototype, or ``require(BASE + '/lib/x')`` from ``require(userInput)``. These
predicates take the scanned code and the regex match and say whether the match is worth reporting;
rules name them as their ``keep_if``. They are heuristics over text (no parser per language), kept
small and each tested with a true positive it must keep and a false positive it must drop.
"""

from __future__ import annotations

import bisect
import functools
import re

# Words (identifier parts, lower case) that say a value is a secret or guards one. Singular on
# purpose: ``api_keys[rand(0, 4)]`` picks one of several keys, it does not make one.
SECRET_WORDS = frozenset({
    "token", "secret", "password", "passwd", "passphrase", "pwd", "salt", "nonce", "csrf", "xsrf", "otp",
    "pin", "session", "sessid", "captcha", "activation", "verification", "reset", "crypt", "crypto",
    "cipher", "encrypt", "encryption", "iv", "key", "uuid", "guid", "auth", "credential", "credentials",
    "hmac", "signature",
})

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_CONTROL = frozenset({"if", "for", "while", "switch", "catch", "return", "else", "do", "using", "lock", "foreach",
                      "new", "throw", "elseif", "elif", "with", "match", "when", "sizeof"})
# A line that opens a function: JS/PHP ``function``, Python ``def``, Rust ``fn``, or a C-family
# signature ``type name(params)`` / JS method ``name(params) {``; control statements are excluded.
_HEADER = re.compile(
    r"\bfunction\b|^\s*(?:async\s+)?def\s|^\s*(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s"
    r"|^\s*(?:[\w<>\[\],.?*&:~]+\s+)*(?P<name>[\w$~]+)\s*\([^;]*\)\s*(?:const\s*)?(?:throws\s[\w.,\s]+)?\{?\s*$")
_HEADER_LOOKBACK = 60  # lines


def words(text: str) -> set[str]:
    """Lower-case parts of every identifier-like token: ``genSessionToken`` -> gen, session, token."""
    out = set()
    for tok in _IDENT.findall(text):
        for part in tok.split("_"):
            out.update(w.lower() for w in _CAMEL.findall(part))
    return out


def mentions_secret(text: str) -> bool:
    return not SECRET_WORDS.isdisjoint(words(text))


def _line_bounds(code: str, pos: int) -> tuple[int, int]:
    start = code.rfind("\n", 0, pos) + 1
    end = code.find("\n", pos)
    return start, (len(code) if end == -1 else end)


@functools.lru_cache(maxsize=8)
def _headers(code: str) -> tuple[list[str], list[int], list[int], list[str]]:
    """Lines of ``code``, their starts, and the (line index, text) of every line that opens a function.

    Computed once per scanned text (rules call the checks once per match; the cache keys on the
    code string, whose hash Python keeps)."""
    lines = code.split("\n")
    starts, idx, texts = [0] * len(lines), [], []
    for n, line in enumerate(lines):
        if n:
            starts[n] = starts[n - 1] + len(lines[n - 1]) + 1
        m = _HEADER.search(line)
        if m and (m.group("name") is None or line.split("(")[0].split()[0] not in _CONTROL):
            idx.append(n)
            texts.append(line)
    return lines, starts, idx, texts


def enclosing_header(code: str, pos: int) -> str:
    """The nearest line at or above ``pos`` that opens a function, or "" within the lookback."""
    _, starts, idx, texts = _headers(code)
    line = bisect.bisect_right(starts, pos) - 1
    k = bisect.bisect_right(idx, line) - 1
    return texts[k] if k >= 0 and line - idx[k] < _HEADER_LOOKBACK else ""


_COMMENT = re.compile(r"(?://|/\*|^\s*\*|^\s*#(?!\s*(?:include|define|if|ifn?def|endif|else|pragma)\b)).*")
COMMENT_LOOKBACK = 10  # lines


def comment_text(lines: list[str]) -> str:
    """The comment parts of ``lines`` (``//``, ``/* */``, ``*`` continuation, ``#`` but not C directives)."""
    return "\n".join(m.group() for line in lines if (m := _COMMENT.search(line)))


def comments_above(code: str, pos: int) -> str:
    """Comment text on the ``COMMENT_LOOKBACK`` lines above ``pos`` (what the code says it is making)."""
    lines, starts, _, _ = _headers(code)
    line = bisect.bisect_right(starts, pos) - 1
    return comment_text(lines[max(0, line - COMMENT_LOOKBACK):line])


# ``keys[`` / ``$api_tokens[`` / ``self.secrets [`` right before the match: the match is the index.
_SUBSCRIPT_OF = re.compile(r"([$\w.]+)\s*\[\s*$")


def picks_existing_secret(code: str, m: re.Match) -> bool:
    """The random value is the index into a collection of secrets that already exist.

    ``$api_keys[rand(0, 4)]`` or ``tokens[random.randrange(3)]`` choose one of several keys: the
    randomness spreads load, it makes no secret, so there is nothing to predict. The collection's
    name must be a plural of a secret word; ``chars[rand() % 62]`` (a password built one character
    at a time) indexes no secrets and stays a finding.
    """
    line_start, _ = _line_bounds(code, m.start())
    before = _SUBSCRIPT_OF.search(code[line_start:m.start()])
    if before is None:
        return False
    plural = {w[:-1] for w in words(before.group(1)) if w.endswith("s")}
    return not SECRET_WORDS.isdisjoint(plural)


def in_secret_context(code: str, m: re.Match) -> bool:
    """Weak randomness matters where it makes a secret: its line, its function or a comment above names one.

    CWE-338/330/335 are about predictable values *in a security context*; ``rand() % width`` for a
    map tile, ``Math.random()`` as a cache-buster or ``random.shuffle(images)`` are not, while
    ``token = rand()``, ``generate_session_id() { ... rand() ... }`` or ``rand()`` under a
    ``/* generate shared-secret */`` comment are. A random index that picks one of several existing
    secrets (:func:`picks_existing_secret`) makes none.
    """
    if picks_existing_secret(code, m):
        return False
    start, end = _line_bounds(code, m.start())
    return (mentions_secret(code[start:end]) or mentions_secret(enclosing_header(code, m.start()))
            or mentions_secret(comments_above(code, m.start())))


def _split_top(text: str, seps: str) -> list[str] | None:
    """Split ``text`` at ``seps`` characters outside quotes and brackets; stop at an unmatched closer.

    Returns the parts (the last one ends at the unmatched closer or the end of text), or None when a
    quote or bracket is still open at the end.
    """
    depth, quote, parts, cur, i = 0, "", [], [], 0
    while i < len(text):
        ch = text[i]
        if quote:
            cur.append(ch)
            if ch == "\\" and i + 1 < len(text):
                cur.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
            cur.append(ch)
        elif ch in "([{":
            depth += 1
            cur.append(ch)
        elif ch in ")]}":
            if depth == 0:
                parts.append("".join(cur).strip())
                return parts
            depth -= 1
            cur.append(ch)
        elif ch in seps and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    if quote or depth:
        return None
    parts.append("".join(cur).strip())
    return parts


def call_args(code: str, pos: int) -> list[str] | None:
    """Top-level arguments of the call whose ``(`` is the first one at or after ``pos``; None if unbalanced."""
    open_at = code.find("(", pos)
    if open_at == -1:
        return None
    parts = _split_top(code[open_at + 1:], ",")
    if parts is None:
        return None
    return [] if parts == [""] else parts


_LIT = r"(?:'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|`[^`$\n]*`)"
_BASE = r"[\w$]+(?:\.[\w$]+)*(?:\(\))?"  # an identifier, member chain, or ``process.cwd()``
_BASE_PLUS_LITERAL = re.compile(
    rf"{_BASE}(?:\s*\+\s*{_LIT})+|path\.(?:join|resolve)\(\s*{_BASE}(?:\s*,\s*{_LIT})+\s*\)")


def is_base_plus_literal(arg: str) -> bool:
    """``DIR + '/x/y.pem'`` or ``path.join(DIR, 'x')``: only the base directory varies, not the name.

    Path traversal and module injection need control of the name's components; a fixed name under
    a configured base directory is not reachable that way.
    """
    return _BASE_PLUS_LITERAL.fullmatch(arg.strip()) is not None


def is_constant_string(arg: str, code: str) -> bool:
    """``'cmd ' + NAME + ' x'`` where every NAME is only ever assigned a string literal in ``code``."""
    parts = _split_top(arg.strip(), "+")
    if parts is None:
        return False
    for part in parts:
        if re.fullmatch(_LIT, part):
            continue
        if not re.fullmatch(r"[A-Za-z_$][\w$]*", part):
            return False
        if not _only_literals_assigned(code, part):
            return False
    return True


@functools.lru_cache(maxsize=64)
def _only_literals_assigned(code: str, name: str) -> bool:
    values = re.findall(rf"(?<![\w$.])\b{re.escape(name)}\s*(?:\+|-|\*|/)?=(?![=>])\s*([^;\n]*)", code)
    return bool(values) and all(re.fullmatch(rf"\s*{_LIT}\s*,?\s*", v) for v in values)


def is_c_declaration(code: str, m: re.Match) -> bool:
    """``int MD4_Init(MD4_CTX *c);`` or ``const EVP_MD *EVP_md5(void);``: a prototype, not a call.

    Before the name there are only type words and ``*`` (a call is preceded by an operator, a ``(``,
    ``return`` or nothing).
    """
    start, _ = _line_bounds(code, m.start())
    prefix = code[start:m.start()].strip()
    if not prefix or not re.fullmatch(r"[\w\s*]+", prefix):
        return False
    return prefix.split()[0] not in _CONTROL and re.search(r"[\w*]$", prefix) is not None


def is_literal(arg: str) -> bool:
    """A single string literal (no concatenation, no interpolation)."""
    return re.fullmatch(_LIT, arg.strip()) is not None


def nth_arg(code: str, m: re.Match, n: int) -> str | None:
    """The ``n``-th (0-based) argument of the call the match starts, or None if it has fewer."""
    args = call_args(code, m.start())
    return args[n] if args is not None and len(args) > n else None


def is_c_call(code: str, m: re.Match) -> bool:
    """A use of the function, not its prototype (``T *name(void);`` or ``int name(T *c);``)."""
    return not is_c_declaration(code, m) and nth_arg(code, m, 0) != "void"


@functools.lru_cache(maxsize=8)
def _char_arrays(code: str) -> dict[str, str]:
    """``name -> N`` for every ``char name[N]`` declared in ``code`` (``N`` a number or a macro; first wins)."""
    out: dict[str, str] = {}
    for decl in re.findall(r"\bchar\b([^;{}()]*)", code):
        for name, size in re.findall(r"(?<![\w.>])(\w+)\s*\[\s*(\w+)\s*\]", re.sub(r"=[^,]*", "", decl)):
            out.setdefault(name, size)
    return out


def _array_size(code: str, name: str) -> str | None:
    return _char_arrays(code).get(name)


def is_bounded_array_copy(code: str, m: re.Match) -> bool:
    """``strcpy(dst, src)`` that cannot overflow: ``dst`` is a ``char dst[N]`` declared here and ``src``
    a literal shorter than N or a ``char src[M]`` with M <= N (same macro, or both numbers)."""
    args = call_args(code, m.start())
    if args is None or len(args) != 2 or not re.fullmatch(r"\w+", args[0]):
        return False
    dst = _array_size(code, args[0])
    if dst is None:
        return False
    src = args[1].strip()
    if is_literal(src):
        return dst.isdigit() and len(src) - 2 < int(dst)  # quotes out, the NUL in (escapes over-count: safe side)
    if not re.fullmatch(r"\w+", src):
        return False
    size = _array_size(code, src)
    return size is not None and (size == dst or (size.isdigit() and dst.isdigit() and int(size) <= int(dst)))
