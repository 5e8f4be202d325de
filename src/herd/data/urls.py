"""URL filtering (block-listed domains, hard and soft banned words) and keep-latest-version-of-a-URL.

:class:`UrlFilter` follows RefinedWeb/datatrove's rules: a document is dropped when its
host or any parent domain is block-listed, its exact URL is, a hard-banned word is one of
the URL's alphanumeric words, at least ``soft_word_threshold`` soft-banned words are, or a
banned sub-word occurs anywhere in the URL with punctuation removed. The bundled word lists
are datatrove's (assets/url/, Apache-2.0); domain block lists are the user's (one domain
per line, ``#`` comments), since the usual UT1 lists are not freely redistributable.

:class:`LatestUrl` keeps one document per normalised URL (scheme, ``www.``, fragment and
trailing slash ignored): the one with the latest ``meta.<date_field>`` (ISO 8601 strings,
or numbers), the later one in input order on ties or when undated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from herd.data.records import CurateError, GlobalStep, Record, Scan, Step

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


@cache
def bundled_list(name: str) -> frozenset[str]:
    text = resources.files("herd.data").joinpath("assets", "url", name).read_text("utf-8")
    return frozenset(_NON_ALNUM.sub("", w.lower()) for w in text.splitlines() if w.strip() and not w.startswith("#"))


def _read_list(path: str | Path, what: str) -> set[str]:
    p = Path(path)
    if not p.is_file():
        raise CurateError(f"url_filter: {what} file {p} does not exist")
    return {w.strip().lower() for w in p.read_text("utf-8").splitlines() if w.strip() and not w.startswith("#")}


def host_of(url: str) -> str:
    try:
        host = urlsplit(url if "://" in url else "http://" + url).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip() if "://" in url else "http://" + url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    port = f":{parts.port}" if parts.port and parts.port not in (80, 443) else ""
    path = parts.path.rstrip("/") or ""
    return f"{host}{port}{path}" + (f"?{parts.query}" if parts.query else "")


class UrlFilter(Step):
    kind = "url_filter"

    def __init__(self, *, url_field: str = "url", domains: Sequence[str] = (), domain_files: Sequence[str] = (),
                 urls: Sequence[str] = (), banned_words: Sequence[str] = (), soft_banned_words: Sequence[str] = (),
                 banned_subwords: Sequence[str] = (), soft_word_threshold: int = 2, use_bundled_lists: bool = True,
                 missing_url: str = "keep", **kw) -> None:
        super().__init__(**kw)
        if missing_url not in ("keep", "drop"):
            raise CurateError(f"url_filter: missing_url must be 'keep' or 'drop', got {missing_url!r}")
        self.url_field, self.soft_word_threshold, self.missing_url = url_field, soft_word_threshold, missing_url
        self.domains = {d.lower().removeprefix("www.") for d in domains}
        for f in domain_files:
            self.domains |= _read_list(f, "domain list")
        self.urls = set(urls)
        norm = lambda ws: {_NON_ALNUM.sub("", w.lower()) for w in ws}  # noqa: E731
        self.banned = norm(banned_words) | (bundled_list("banned_words.txt") if use_bundled_lists else set())
        self.soft = norm(soft_banned_words) | (bundled_list("soft_banned_words.txt") if use_bundled_lists else set())
        subwords = norm(banned_subwords) | (bundled_list("banned_subwords.txt") if use_bundled_lists else set())
        subwords.discard("")
        self._subword_re = (re.compile("|".join(sorted(map(re.escape, subwords), key=len, reverse=True)))
                            if subwords else None)

    def process(self, rec: Record) -> str | None:
        url = rec["meta"].get(self.url_field)
        if not url:
            return "url_missing" if self.missing_url == "drop" else None
        host = host_of(url)
        labels = host.split(".")
        for i in range(len(labels) - 1):
            if ".".join(labels[i:]) in self.domains:
                return "url_blocked_domain"
        if url in self.urls:
            return "url_blocked_url"
        words = set(_NON_ALNUM.split(url.lower()))
        if words & self.banned:
            return "url_banned_word"
        if len(words & self.soft) >= self.soft_word_threshold:
            return "url_soft_banned_words"
        if self._subword_re is not None and self._subword_re.search(_NON_ALNUM.sub("", url.lower())):
            return "url_banned_subword"
        return None


def _date_key(value: Any) -> float:
    if value is None:
        return float("-inf")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return float("-inf")
    if dt.tzinfo is None:  # naive dates are taken as UTC, never as this machine's local time
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class _UrlScan(Scan):
    def __init__(self, step: LatestUrl) -> None:
        self.step = step
        self.items: list[tuple[str, float, int]] = []
        self.n = 0

    def add(self, rec: Record) -> None:
        url = rec["meta"].get(self.step.url_field)
        if url and self.step.applies(rec):
            self.items.append((normalize_url(str(url)), _date_key(rec["meta"].get(self.step.date_field)), self.n))
        self.n += 1

    def result(self) -> Any:
        return self.items


class LatestUrl(GlobalStep):
    """Keep only the most recent version of each URL."""

    kind = "latest_url"

    def __init__(self, *, url_field: str = "url", date_field: str = "date", **kw) -> None:
        super().__init__(**kw)
        self.url_field, self.date_field = url_field, date_field

    def new_scan(self) -> Scan:
        return _UrlScan(self)

    def fit(self, scans: Sequence[Any]) -> list[Any]:
        best: dict[str, tuple[float, int, int]] = {}
        for f, items in enumerate(scans):
            for url, date, pos in items:
                cur = best.get(url)
                if cur is None or (date, f, pos) >= cur:
                    best[url] = (date, f, pos)
        winners: list[set[int]] = [set() for _ in scans]
        for _, f, pos in best.values():
            winners[f].add(pos)
        return [np.asarray(sorted(pos for _, _, pos in items if pos not in win), dtype=np.int64)
                for items, win in zip(scans, winners, strict=False)]

    def apply(self, rec: Record, position: int, state: Any) -> str | None:
        i = np.searchsorted(state, position)
        return "url_older_version" if i < len(state) and state[i] == position else None
