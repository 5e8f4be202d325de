"""Word, line and sentence splitting shared by the filters, and text normalisation for hashing.

herd splits words with one compiled regular expression instead of a per-language NLP
tokenizer (datatrove runs spaCy's English tokenizer for its Gopher filters): it is an
order of magnitude faster and the Gopher/C4 rules only count words, their lengths and
n-grams. Where this gives a different decision from datatrove's spaCy words, the test
``tests/data/test_curate_heuristics_peer.py`` prints and explains the cases (contractions
such as "don't", which spaCy splits into "do" + "n't", and hyphenated words).
"""

from __future__ import annotations

import re
import unicodedata

# URLs and e-mail addresses stay whole (as in spaCy); words keep inner apostrophes, dots and
# commas between letters/digits ("U.S", "3.14", "1,000"); a run of one repeated symbol ("...",
# "--", ">>>", "==") is one token, as spaCy keeps it; any other non-space character is a token.
WORD_RE = re.compile(r"https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+|\w+(?:['’.,]\w+)*|([^\w\s])\1+|[^\w\s]")
SENTENCE_END_RE = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+")
_PUNCT_RE = re.compile(r"[^\w\s]")
_DIGITS_RE = re.compile(r"\d+")
_SPACE_RE = re.compile(r"\s+")


def split_words(text: str) -> list[str]:
    return [m.group(0) for m in WORD_RE.finditer(text)]


def split_sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in SENTENCE_END_RE.split(text)) if s]


def normalize_for_hash(text: str) -> str:
    """Lower case, no punctuation or accents, digits as 0, single spaces: what "the same text" means for dedup."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    text = _DIGITS_RE.sub("0", _PUNCT_RE.sub(" ", text))
    return _SPACE_RE.sub(" ", text).strip()


def word_ngrams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
