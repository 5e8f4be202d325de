"""Heuristic quality filters with their published defaults: Gopher quality, Gopher repetition, C4.

* Gopher (Rae et al. 2021, "Scaling Language Models", appendix A1.1 and table A1): word
  count 50..100,000, mean word length 3..10, "#" and ellipsis to word ratio <= 0.1, <= 90 %
  lines starting with a bullet, <= 30 % ending in an ellipsis, >= 80 % words with a letter,
  >= 2 of the stop words {the, be, to, of, and, that, have, with} (other languages: their
  stopwords-iso list, see ``GopherQuality.stop_words_for``); repetition: duplicate
  line/paragraph fractions 0.3, their character fractions 0.2, top 2/3/4-gram character
  fractions 0.20/0.18/0.16, duplicated 5..10-gram character fractions 0.15..0.10.
* C4 (Raffel et al. 2020 and tensorflow_datasets ``c4_utils``): keep lines ending in terminal
  punctuation with >= 3 words, drop lines mentioning javascript or cookie/terms policies
  and lines with a word over 1,000 characters, drop pages with "lorem ipsum" or "{", and
  pages left with fewer than 5 sentences. The kept lines become the text.
* :class:`DupNgramCoverage`: the one number Llama 3 names, the share of characters covered
  by duplicated word n-grams (Gopher's measure, one n and one threshold), used to catch
  log dumps and error-message pages.

Every threshold is a constructor argument (so a ``[[step]]`` table in the TOML config) and
``None`` switches a rule off. Decisions are checked against datatrove's implementations in
tests/data/test_curate_heuristics_peer.py.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from herd.data.records import CurateError, Record, Step
from herd.data.textutil import split_sentences, split_words

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_GOPHER_SET = frozenset(GOPHER_STOP_WORDS)
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LINES_RE = re.compile(r"\n+")


def _is_symbol(word: str) -> bool:
    return not any(c.isalnum() for c in word)


class GopherQuality(Step):
    kind = "gopher_quality"

    def __init__(self, *, min_doc_words: int | None = 50, max_doc_words: int | None = 100_000,
                 min_avg_word_length: float | None = 3, max_avg_word_length: float | None = 10,
                 max_symbol_word_ratio: float | None = 0.1, max_bullet_lines_ratio: float | None = 0.9,
                 max_ellipsis_lines_ratio: float | None = 0.3, min_alpha_words_ratio: float | None = 0.8,
                 min_stop_words: int | None = 2, stop_words: Sequence[str] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = min_avg_word_length, max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio, self.max_ellipsis_lines_ratio = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        self.stop_words = frozenset(stop_words) if stop_words is not None else None
        self._by_language: dict[str, frozenset[str] | None] = {}

    def stop_words_for(self, language: str | None) -> tuple[frozenset[str], bool]:
        """(stop words, compare lower-cased) for a document's ``meta.language``.

        ``stop_words`` given: that list for every language. Otherwise English (and documents without
        a language id) get Gopher's eight, matched as Gopher and datatrove match them; another language
        gets its stopwords-iso list (the ``stopwordsiso`` package, MIT), matched lower-cased; a language
        without a list falls back to Gopher's English words.
        """
        if self.stop_words is not None:
            return self.stop_words, False
        if not language or language in ("en", "unknown"):
            return _GOPHER_SET, False
        if language not in self._by_language:
            try:
                import stopwordsiso
            except ImportError:
                raise CurateError("gopher_quality: per-language stop words need the stopwordsiso package "
                                  "(pip install stopwordsiso), or set stop_words = [...]") from None
            words = stopwordsiso.stopwords(language)
            self._by_language[language] = frozenset(w.lower() for w in words) if words else None
        found = self._by_language[language]
        return (found, True) if found else (_GOPHER_SET, False)

    def process(self, rec: Record) -> str | None:
        text = rec["text"]
        words = split_words(text)
        n_words = len(words)
        if n_words == 0:
            return "gopher_short_doc"
        content = [w for w in words if not _is_symbol(w)]
        n = len(content)
        if self.min_doc_words is not None and n < self.min_doc_words:
            return "gopher_short_doc"
        if self.max_doc_words is not None and n > self.max_doc_words:
            return "gopher_long_doc"
        mean_len = sum(map(len, content)) / n if n else 0.0
        if self.min_avg_word_length is not None and mean_len < self.min_avg_word_length:
            return "gopher_below_avg_word_length"
        if self.max_avg_word_length is not None and mean_len > self.max_avg_word_length:
            return "gopher_above_avg_word_length"
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_words > self.max_symbol_word_ratio:
                return "gopher_too_many_hashes"
            if (text.count("...") + text.count("…")) / n_words > self.max_symbol_word_ratio:
                return "gopher_too_many_ellipsis"
        lines = text.splitlines() or [""]
        if self.max_bullet_lines_ratio is not None:
            bullets = sum(ln.lstrip().startswith(("•", "-")) for ln in lines)
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio is not None:
            ends = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
            if ends / len(lines) > self.max_ellipsis_lines_ratio:
                return "gopher_too_many_end_ellipsis"
        if self.min_alpha_words_ratio is not None:
            alpha = sum(any(c.isalpha() for c in w) for w in words)
            if alpha / n_words < self.min_alpha_words_ratio:
                return "gopher_below_alpha_threshold"
        if self.min_stop_words is not None:
            stop, lower = self.stop_words_for(rec["meta"].get("language"))
            if len(stop.intersection([w.lower() for w in words] if lower else words)) < self.min_stop_words:
                return "gopher_not_enough_stop_words"
        return None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in them), first occurrences not counted."""
    seen: set[str] = set()
    n = chars = 0
    for item in items:
        if item in seen:
            n += 1
            chars += len(item)
        else:
            seen.add(item)
    return n, chars


def top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent n-gram (its length times its count)."""
    counts = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return len(gram) * count


def duplicated_ngram_chars(words: list[str], n: int) -> int:
    """Characters of word n-grams that repeat an earlier n-gram, counting each word once.

    A repeat jumps past its n words so overlapping repeats are not counted twice
    (Gopher's "fraction of characters in duplicate n-grams"); joined without spaces, as
    datatrove does, so the measure compares with its numbers.
    """
    seen: set[str] = set()
    chars = i = 0
    while i < len(words) - n + 1:
        gram = "".join(words[i:i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


class GopherRepetition(Step):
    kind = "gopher_repetition"

    def __init__(self, *, dup_line_frac: float | None = 0.3, dup_para_frac: float | None = 0.3,
                 dup_line_char_frac: float | None = 0.2, dup_para_char_frac: float | None = 0.2,
                 top_n_grams: Sequence[Sequence[float]] = ((2, 0.20), (3, 0.18), (4, 0.16)),
                 dup_n_grams: Sequence[Sequence[float]] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                                           (10, 0.10)), **kw) -> None:
        super().__init__(**kw)
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_n_grams = [(int(n), float(f)) for n, f in top_n_grams]
        self.dup_n_grams = [(int(n), float(f)) for n, f in dup_n_grams]

    def process(self, rec: Record) -> str | None:
        text = rec["text"]
        if not text:
            return "empty"
        paragraphs = _PARAGRAPH_RE.split(text.strip())
        n_dup, chars = _duplicates(paragraphs)
        if self.dup_para_frac is not None and n_dup / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if self.dup_para_char_frac is not None and chars / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _LINES_RE.split(text)
        n_dup, chars = _duplicates(lines)
        if self.dup_line_frac is not None and n_dup / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if self.dup_line_char_frac is not None and chars / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"
        words = split_words(text)
        for n, frac in self.top_n_grams:
            if len(words) >= n and top_ngram_chars(words, n) / len(text) > frac:
                return f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            if duplicated_ngram_chars(words, n) / len(text) > frac:
                return f"duplicated_{n}_n_grams"
        return None


class DupNgramCoverage(Step):
    """Drop documents where duplicated word n-grams cover more than ``max_ratio`` of the characters."""

    kind = "dup_ngram_coverage"

    def __init__(self, *, n: int = 5, max_ratio: float = 0.15, **kw) -> None:
        super().__init__(**kw)
        if n < 1 or not 0 < max_ratio <= 1:
            raise ValueError(f"dup_ngram_coverage: need n >= 1 and 0 < max_ratio <= 1, got {n=}, {max_ratio=}")
        self.n, self.max_ratio = n, max_ratio

    def process(self, rec: Record) -> str | None:
        text = rec["text"]
        words = split_words(text)
        ratio = duplicated_ngram_chars(words, self.n) / max(len(text), 1)
        rec["meta"]["dup_ngram_coverage"] = round(ratio, 4)
        return "dup_ngram_coverage" if ratio > self.max_ratio else None


C4_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_TERMINAL = (".", "?", "!", '"', "'")


class C4Quality(Step):
    kind = "c4_quality"

    def __init__(self, *, remove_citations: bool = True, filter_no_terminal_punct: bool = True,
                 min_num_sentences: int | None = 5, min_words_per_line: int | None = 3,
                 max_word_length: int | None = 1000, filter_lorem_ipsum: bool = True, filter_javascript: bool = True,
                 filter_curly_bracket: bool = True, filter_policy: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.remove_citations, self.filter_no_terminal_punct = remove_citations, filter_no_terminal_punct
        self.min_num_sentences, self.min_words_per_line = min_num_sentences, min_words_per_line
        self.max_word_length, self.filter_lorem_ipsum = max_word_length, filter_lorem_ipsum
        self.filter_javascript, self.filter_curly_bracket = filter_javascript, filter_curly_bracket
        self.filter_policy = filter_policy

    def process(self, rec: Record) -> str | None:
        kept: list[str] = []
        sentences = 0
        dropped_lines = 0
        for line in rec["text"].splitlines():
            line = line.strip()
            words = line.split()
            if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
                dropped_lines += 1
                continue
            if self.remove_citations:
                line = _CITATION_RE.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(_TERMINAL) or line.endswith("...")):
                dropped_lines += 1
                continue
            if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
                dropped_lines += 1
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "c4_lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                dropped_lines += 1
                continue
            if self.filter_curly_bracket and "{" in line:
                return "c4_curly_bracket"
            if self.filter_policy and any(p in lower for p in C4_POLICY):
                dropped_lines += 1
                continue
            if self.min_num_sentences is not None:
                sentences += len(split_sentences(line))
            kept.append(line)
        if self.min_num_sentences is not None and sentences < self.min_num_sentences:
            return "c4_too_few_sentences"
        rec["text"] = "\n".join(kept).strip()
        if dropped_lines:
            rec["meta"]["c4_lines_removed"] = rec["meta"].get("c4_lines_removed", 0) + dropped_lines
        return None
