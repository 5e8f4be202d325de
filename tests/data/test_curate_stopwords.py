"""Gopher's stop-word rule per language: stopwords-iso lists for documents language id marked non-English."""

from __future__ import annotations

import pytest

from herd.data.heuristics import GopherQuality
from herd.data.records import make_record
from tests.data.curate_corpus import ENGLISH, FRENCH, GERMAN, SPANISH

pytest.importorskip("stopwordsiso")

# keyword pages: real words of each language, no function words (what the rule is there to catch)
GERMAN_SALAD = ("Autoversicherung Vergleich Kfz Tarif Rechner Haftpflicht Vollkasko Teilkasko Prämie Rabatt "
                "Schadenfreiheitsklasse Versicherer Beitrag Werkstattbindung Zweitwagen Fahranfänger ") * 4
FRENCH_SALAD = ("assurance auto comparateur tarif devis mutuelle habitation prêt immobilier taux crédit "
                "banque épargne placement retraite fiscalité patrimoine ") * 4


def _doc(text: str, language: str | None) -> dict:
    return make_record("d", text, {"language": language} if language else {})


@pytest.mark.parametrize(("text", "language"), [(GERMAN * 2, "de"), (FRENCH * 2, "fr"), (SPANISH * 2, "es")])
def test_prose_in_its_language_passes(text, language):
    step = GopherQuality()
    assert step(_doc(text, language)) is None
    # the same page judged with Gopher's English words (what herd did before, and does for unknown languages)
    assert step(_doc(text, None)) == "gopher_not_enough_stop_words"


@pytest.mark.parametrize(("text", "language"), [(GERMAN_SALAD, "de"), (FRENCH_SALAD, "fr")])
def test_keyword_salad_fails(text, language):
    assert GopherQuality()(_doc(text, language)) == "gopher_not_enough_stop_words"


def test_english_and_explicit_lists_unchanged():
    assert GopherQuality()(_doc(ENGLISH * 2, "en")) is None
    assert GopherQuality()(_doc(ENGLISH * 2, None)) is None
    # an explicit list applies to every language, as before
    step = GopherQuality(stop_words=["the", "and"])
    assert step(_doc(GERMAN * 2, "de")) == "gopher_not_enough_stop_words"
    assert step(_doc(ENGLISH * 2, "de")) is None
    # a language without a stopwords-iso list falls back to Gopher's English words
    assert GopherQuality().stop_words_for("xx")[0] == frozenset(["the", "be", "to", "of", "and", "that", "have",
                                                                  "with"])
