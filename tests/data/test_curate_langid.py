from __future__ import annotations

import pytest

from herd.data.langid import LanguageId
from herd.data.records import CurateError
from tests.data.curate_corpus import ENGLISH, FRENCH, GERMAN, SPANISH


def test_lingua_labels_languages_and_applies_thresholds():
    step = LanguageId(candidates=["en", "de", "fr", "es"], keep=["en", "de", "fr"],
                      min_score_per_language={"fr": 0.99999})
    for text, lang in ((ENGLISH, "en"), (GERMAN, "de")):
        r = {"id": "x", "text": text, "meta": {}}
        assert step.process(r) is None
        assert r["meta"]["language"] == lang and r["meta"]["language_score"] > 0.65
    spanish = {"id": "x", "text": SPANISH, "meta": {}}
    assert step.process(spanish) == "language_not_kept" and spanish["meta"]["language"] == "es"
    french = {"id": "x", "text": FRENCH, "meta": {}}
    assert step.process(french) in (None, "language_low_score") and french["meta"]["language"] == "fr"
    if french["meta"]["language_score"] < 0.99999:
        assert step.process(french) == "language_low_score"


def test_unknown_language_code_is_named():
    with pytest.raises(CurateError, match="'xx'"):
        LanguageId(keep=["xx"])
