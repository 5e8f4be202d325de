"""PII redaction: e-mail addresses, phone numbers and IP addresses, counted per document.

Regular expressions in the style of FineWeb/BigScience's PII step, tuned to leave dates,
version strings, prices and ISBNs alone: a phone number needs at least two separators
(``+1 (555) 123-4567``, ``030 1234 5678``, ``+44 20 7946 0958``) and an IP address must parse with
:mod:`ipaddress`. Matches are replaced by placeholders (configurable) and counted in
``meta.pii`` so the report can total them. Nothing is dropped.
"""

from __future__ import annotations

import ipaddress
import re

from herd.data.records import Record, Step

EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w-])")
PHONE_RE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?|\d{2,4}[ .-])\d{2,4}[ .-]\d{3,4}(?:[ .-]\d{2,4})?"
    r"(?![\w.-]\d)(?!\w)"
)
IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class PiiRedactor(Step):
    kind = "pii"

    def __init__(self, *, emails: bool = True, phones: bool = True, ips: bool = True,
                 email_replacement: str = "<EMAIL>", phone_replacement: str = "<PHONE>",
                 ip_replacement: str = "<IP_ADDRESS>", **kw) -> None:
        super().__init__(**kw)
        self.emails, self.phones, self.ips = emails, phones, ips
        self.email_replacement, self.phone_replacement = email_replacement, phone_replacement
        self.ip_replacement = ip_replacement

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        counts = {"email": 0, "phone": 0, "ip": 0}

        def sub(kind: str, replacement: str, check=None):
            def repl(m: re.Match[str]) -> str:
                if check is not None and not check(m.group(0)):
                    return m.group(0)
                counts[kind] += 1
                return replacement
            return repl

        if self.emails:
            text = EMAIL_RE.sub(sub("email", self.email_replacement), text)
        if self.ips:
            text = IPV4_RE.sub(sub("ip", self.ip_replacement, _valid_ip), text)
            text = IPV6_RE.sub(sub("ip", self.ip_replacement, lambda s: s.count(":") >= 2 and _valid_ip(s)), text)
        if self.phones:
            text = PHONE_RE.sub(sub("phone", self.phone_replacement), text)
        return text, counts

    def process(self, rec: Record) -> str | None:
        rec["text"], counts = self.redact(rec["text"])
        if any(counts.values()):
            rec["meta"]["pii"] = {k: v for k, v in counts.items() if v}
            for k, v in counts.items():
                if v:
                    self.count(k, v)
                    self.count(f"documents_with_{k}")
        return None
