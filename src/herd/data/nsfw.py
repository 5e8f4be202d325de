"""The "dirty word" (NSFW) filter: count block-listed words per language and drop above a rate.

Word lists are the LDNOOBW lists C4 used (assets/badwords/<lang>.txt, CC BY 4.0, see
assets/README.md). C4 dropped a page on a single hit, which throws away medicine, biology
and news ("anal fissure", "breast cancer", "sex differences"). Llama 3 counts dirty words and
published no threshold, so herd drops a document only when it has at least ``min_count``
hits **and** they make up more than ``max_ratio`` of its words: defaults 3 hits and 1 %.
On the real-looking texts in tests/data/test_curate_nsfw.py a medical page with two
mentions and a news page with one are kept, while explicit spam (a hit every few words,
5-20 %) is dropped; 1 % sits well between the two regimes. Both are overridable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from herd.data.records import CurateError, Record, Step
from herd.data.textutil import split_words

BUNDLED_LANGUAGES = ("de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru", "sv")


@cache
def bundled_words(language: str) -> frozenset[str]:
    if language not in BUNDLED_LANGUAGES:
        raise CurateError(f"nsfw: no bundled word list for language {language!r}; bundled: "
                          f"{', '.join(BUNDLED_LANGUAGES)} (pass word_lists = {{{language} = 'path'}})")
    text = resources.files("herd.data").joinpath("assets", "badwords", f"{language}.txt").read_text("utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip())


def _pattern(words: frozenset[str]) -> re.Pattern[str]:
    alternatives = sorted((re.escape(w) for w in words), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")


class DirtyWords(Step):
    kind = "nsfw"

    def __init__(self, *, max_ratio: float = 0.01, min_count: int = 3, default_language: str = "en",
                 word_lists: Mapping[str, str] | None = None, extra_words: Mapping[str, Sequence[str]] | None = None,
                 **kw) -> None:
        super().__init__(**kw)
        self.max_ratio, self.min_count, self.default_language = max_ratio, min_count, default_language
        self._files = {k: str(v) for k, v in (word_lists or {}).items()}
        self._extra = {k: [w.lower() for w in v] for k, v in (extra_words or {}).items()}
        self._patterns: dict[str, re.Pattern[str] | None] = {}

    def words_for(self, language: str) -> frozenset[str] | None:
        if language in self._files:
            path = Path(self._files[language])
            if not path.is_file():
                raise CurateError(f"nsfw: word list {path} for language {language!r} does not exist")
            words = frozenset(w.strip().lower() for w in path.read_text("utf-8").splitlines() if w.strip())
        elif language in BUNDLED_LANGUAGES:
            words = bundled_words(language)
        else:
            words = frozenset()
        words = words | frozenset(self._extra.get(language, ()))
        return words or None

    def count(self, text: str, language: str) -> int:
        if language not in self._patterns:
            words = self.words_for(language)
            self._patterns[language] = _pattern(words) if words else None
        pattern = self._patterns[language]
        return len(pattern.findall(text.lower())) if pattern is not None else 0

    def process(self, rec: Record) -> str | None:
        lang = rec["meta"].get("language") or self.default_language
        hits = self.count(rec["text"], lang)
        rec["meta"]["nsfw_words"] = hits
        if hits < self.min_count:
            return None
        n_words = max(len(split_words(rec["text"])), 1)
        return "nsfw_words" if hits / n_words > self.max_ratio else None
