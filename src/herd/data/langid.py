"""Language identification with lingua (PyPI ``lingua-language-detector``), offline, 75 languages.

The detector is built lazily in each worker (it is not picklable and loads its models on
first use), from the ``candidates`` languages only when given (faster and more accurate
than all 75). Each document gets ``meta.language`` (ISO 639-1) and ``meta.language_score``
(lingua's confidence for it). It is dropped when the score is below the language's
threshold (``min_score``, overridable per language with ``min_score_per_language``) or,
with ``keep`` given, when its language is not in it. Only the first ``max_chars``
characters are looked at: identification is settled long before that and lingua's cost
grows with the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from herd.data.records import CurateError, Record, Step


def _language(code: str):
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
    except (AttributeError, ValueError):
        raise CurateError(f"langid: unknown ISO 639-1 language code {code!r}") from None


class LanguageId(Step):
    kind = "langid"

    def __init__(self, *, candidates: Sequence[str] | None = None, keep: Sequence[str] | None = None,
                 min_score: float = 0.65, min_score_per_language: Mapping[str, float] | None = None,
                 max_chars: int = 2000, low_accuracy: bool = False, **kw) -> None:
        super().__init__(**kw)
        for code in list(candidates or []) + list(keep or []):
            _language(code)  # fail at configuration time, naming the code
        self.candidates = list(candidates) if candidates else None
        self.keep = frozenset(keep) if keep else None
        self.min_score = min_score
        self.min_score_per_language = dict(min_score_per_language or {})
        self.max_chars, self.low_accuracy = max_chars, low_accuracy
        self._detector: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_detector": None}

    @property
    def detector(self):
        if self._detector is None:
            from lingua import LanguageDetectorBuilder

            if self.candidates:
                builder = LanguageDetectorBuilder.from_languages(*[_language(c) for c in self.candidates])
            else:
                builder = LanguageDetectorBuilder.from_all_languages()
            if self.low_accuracy:
                builder = builder.with_low_accuracy_mode()
            self._detector = builder.build()
        return self._detector

    def detect(self, text: str) -> tuple[str | None, float]:
        values = self.detector.compute_language_confidence_values(text[: self.max_chars])
        if not values or values[0].value <= 0:
            return None, 0.0
        top = values[0]
        return top.language.iso_code_639_1.name.lower(), float(top.value)

    def process(self, rec: Record) -> str | None:
        lang, score = self.detect(rec["text"])
        rec["meta"]["language"] = lang or "unknown"
        rec["meta"]["language_score"] = round(score, 4)
        if lang is None:
            return "language_unknown"
        if self.keep is not None and lang not in self.keep:
            return "language_not_kept"
        if score < self.min_score_per_language.get(lang, self.min_score):
            return "language_low_score"
        return None
