"""Every filter on hand-made documents that must pass and documents that must be dropped."""

from __future__ import annotations

import json

import pytest

from herd.data.decontam import Decontaminate, benchmark_report
from herd.data.heuristics import C4Quality, DupNgramCoverage, GopherQuality, GopherRepetition
from herd.data.nsfw import DirtyWords
from herd.data.pii import PiiRedactor
from herd.data.records import CurateError
from herd.data.urls import LatestUrl, UrlFilter
from tests.data.curate_corpus import ENGLISH, FRENCH, GERMAN, SPANISH, stdlib_docs

GOOD = ENGLISH + "\n" + ("Engineers inspected the steel supports last spring and found corrosion that had to be "
                         "treated before winter. The work is funded by a regional grant. Local shops say that "
                         "they expect fewer customers while the road is closed, but most of them support the "
                         "project because the old bridge was becoming unsafe.")

DISCLAIMER = ("The views expressed in this article are those of the author alone and do not necessarily reflect the "
              "official policy or position of the publisher, its editors, its advertisers or any of its partners.")


def rec(text, **meta):
    return {"id": "x", "text": text, "meta": dict(meta)}


@pytest.mark.parametrize("text,reason", [
    (GOOD, None),
    ("Too short to be a page. It has a few words only.", "gopher_short_doc"),
    (" ".join(["a", "of", "to", "the", "be", "an", "it", "is"] * 20), "gopher_below_avg_word_length"),
    (" ".join(["internationalization", "telecommunications", "the", "of"] * 30), "gopher_above_avg_word_length"),
    (GOOD + " " + " ".join(["#tag"] * 20), "gopher_too_many_hashes"),
    ("\n".join(f"- item number {i} of the list and the other" for i in range(60)), "gopher_too_many_bullets"),
    ("\n".join(f"and then the story of {i} went on and on through the long dark night of that cold year..."
               for i in range(60)), "gopher_too_many_end_ellipsis"),
    (GOOD + " " + " ".join(str(i) for i in range(400)), "gopher_below_alpha_threshold"),
    (" ".join(["quantum", "chromodynamics", "lattice", "gauge", "fermions"] * 20), "gopher_not_enough_stop_words"),
])
def test_gopher_quality(text, reason):
    assert GopherQuality().process(rec(text)) == reason


@pytest.mark.parametrize("text,reason", [
    (GOOD, None),
    ("\n\n".join(["Buy now and save on every order today."] * 6 + [GOOD]), "dup_para_frac"),
    ("\n".join(GOOD.split(". ") + [DISCLAIMER] * 3), "dup_line_char_frac"),
    (GOOD + " " + " ".join(["best price"] * 80), "top_2_gram"),
    (GOOD + " " + " ".join(f"alpha beta gamma {i}" for i in range(18)), "top_3_gram"),
])
def test_gopher_repetition(text, reason):
    assert GopherRepetition().process(rec(text)) == reason


def test_c4_keeps_good_lines_and_drops_bad_pages():
    step = C4Quality()
    r = rec(GOOD.replace(". ", ".\n") + "\nShare this\nThis site uses cookies to improve your experience.\n"
            "Please enable JavaScript to view the comments.")
    assert step.process(r) is None
    assert "Share this" not in r["text"] and "cookies" not in r["text"] and "JavaScript" not in r["text"]
    assert r["meta"]["c4_lines_removed"] == 3
    assert step.process(rec(GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.")) == "c4_lorem_ipsum"
    assert step.process(rec(GOOD + "\nfunction f() { return 1; } is a function.")) == "c4_curly_bracket"
    assert step.process(rec("One sentence here. Two sentences here.")) == "c4_too_few_sentences"


def test_dup_ngram_coverage_catches_log_dumps():
    log = "\n".join(f"ERROR worker {i % 3} failed to connect to the database server, retrying in 5 seconds."
                    for i in range(30))
    step = DupNgramCoverage()
    assert step.process(rec(log)) == "dup_ngram_coverage"
    r = rec(GOOD)
    assert step.process(r) is None and r["meta"]["dup_ngram_coverage"] < 0.05


def test_nsfw_counts_per_language_and_keeps_incidental_mentions():
    step = DirtyWords()
    medical = rec(" ".join(stdlib_docs(limit=3)) + " An anal fissure is a small tear; see a doctor about anal pain.",
                  language="en")
    assert step.process(medical) is None and medical["meta"]["nsfw_words"] == 2
    spam = rec("hot porn videos, free porn, xxx porn and more porn every day for you tonight", language="en")
    assert step.process(spam) == "nsfw_words"
    german_spam = rec("Geile Fotze, ficken, Schlampe und ficken den ganzen Tag lang", language="de")
    assert step.process(german_spam) == "nsfw_words"
    # the German list is used for German: the same words under "fr" count nothing
    assert DirtyWords().count(german_spam["text"], "fr") == 0
    assert step.process(rec(GERMAN, language="de")) is None


def test_pii_redacts_and_counts():
    step = PiiRedactor()
    r = rec("Write to jane.doe@example.org or call +1 (555) 123-4567 / 030 1234 5678; server 192.168.10.20 and "
            "2001:db8::8a2e:370:7334. Version 1.2.3, the year 2024-05-01, price 1,299.00 and ISBN 978-3-16-148410-0 "
            "stay, as does 999.999.1.1.")
    step.process(r)
    t = r["text"]
    assert "jane.doe" not in t and "555" not in t and "1234 5678" not in t and "192.168" not in t and "db8" not in t
    assert r["meta"]["pii"] == {"email": 1, "phone": 2, "ip": 2}
    for kept in ("Version 1.2.3", "2024-05-01", "1,299.00", "978-3-16-148410-0", "999.999.1.1"):
        assert kept in t
    assert step.counters["email"] == 1 and step.counters["documents_with_ip"] == 1


def test_url_filter(tmp_path):
    domains = tmp_path / "blocked.txt"
    domains.write_text("# spam farms\nbad-site.com\n")
    step = UrlFilter(domain_files=[str(domains)])
    assert step.process(rec("t", url="https://news.example.org/2024/bridge-repairs")) is None
    assert step.process(rec("t", url="https://shop.bad-site.com/page")) == "url_blocked_domain"
    assert step.process(rec("t", url="https://example.com/free-porn-videos")) == "url_banned_word"
    assert step.process(rec("t", url="https://example.com/anus/asshole/page")) == "url_soft_banned_words"
    assert step.process(rec("t")) is None
    with pytest.raises(CurateError, match="missing.txt"):
        UrlFilter(domain_files=[str(tmp_path / "missing.txt")])


def test_latest_url_keeps_the_newest_version():
    f1 = [rec("old", url="http://www.example.com/a/", date="2023-01-01T00:00:00Z"),
          rec("other", url="https://example.com/b")]
    f2 = [rec("new", url="https://example.com/a", date="2024-06-01"), rec("undated", url="https://example.com/b")]
    out = LatestUrl().run([f1, f2])
    assert [r for _, r in out[0]] == ["url_older_version", "url_older_version"]
    assert [r for _, r in out[1]] == [None, None]


def test_decontamination_per_benchmark(tmp_path):
    q = ("Which gas do plants absorb from the atmosphere during photosynthesis in order to build sugars "
         "from water and light energy")
    (tmp_path / "sci.jsonl").write_text(json.dumps({"id": "q1", "question": q, "answer": "carbon dioxide"}) + "\n"
                                        + json.dumps({"id": "q2", "question": "What is two plus two?"}) + "\n")
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "z", "text": ENGLISH}) + "\n")
    step = Decontaminate(benchmarks={"sci": str(tmp_path / "sci.jsonl"), "other": str(tmp_path / "other.jsonl")})
    leaked = rec("Quiz answers! " + q.upper() + "? The answer is carbon dioxide, of course.")
    assert step.process(leaked) == "contaminated"
    assert leaked["meta"]["contamination"] == {"sci": ["q1"]}
    assert step.process(rec(GOOD.replace("The city council", "A council"))) == "contaminated"
    assert step.process(rec(FRENCH + " " + SPANISH)) is None
    report = benchmark_report(step.counters, step.items)
    assert report["sci"] == {"documents": 1, "items_hit": 1, "items": 1, "items_hit_fraction": 1.0}
    assert report["other"]["documents"] == 1 and step.skipped_short == {"sci": 1}
    flag = Decontaminate(benchmarks={"sci": str(tmp_path / "sci.jsonl")}, action="flag")
    r = rec(q)
    assert flag.process(r) is None and "sci" in r["meta"]["contamination"]


def test_exact_dedup_keeps_the_first_copy_across_files():
    from herd.data.dedup import ExactDedup

    f1 = [rec("Hello, World! 2024"), rec(ENGLISH)]
    f2 = [rec("hello world 1999"), rec(GERMAN), rec(ENGLISH + "  ")]
    out = ExactDedup().run([f1, f2])
    assert [r for _, r in out[0]] == [None, None]
    assert [r for _, r in out[1]] == ["exact_duplicate", None, "exact_duplicate"]


def test_ccnet_line_dedup_removes_lines_frequent_in_their_bucket():
    from herd.data.dedup import LineDedup

    boiler = "Subscribe to our newsletter for weekly updates"
    names = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"]
    docs = [rec(f"Story of {n} and the bridge.\n{boiler}\nMore about {n}.") for n in names]
    out = LineDedup(max_count=6, bucket_docs=8).run([docs[:4], docs[4:]])
    texts = [r["text"] for f in out for r, reason in f if reason is None]
    assert texts[3] == "Story of Edsger and the bridge.\nMore about Edsger."
    assert len(texts) == 8 and all(boiler not in t for t in texts)
    # lines are compared normalised, as CCNet does: digits count as 0, so numbered variants are one line
    numbered = [rec(f"Page {i} of 8\n{names[i]} wrote this.") for i in range(8)]
    assert all(r["text"] == f"{names[i]} wrote this." for i, (r, _) in enumerate(LineDedup().run([numbered])[0]))
    # the same 8 docs in buckets of 4: each line occurs 4 times per bucket, under the limit, nothing removed
    docs = [rec(f"Story of {n} and the bridge.\n{boiler}\nMore about {n}.") for n in names]
    out = LineDedup(max_count=6, bucket_docs=4).run([docs])
    assert all(boiler in r["text"] for r, _ in out[0])
    only_boiler = [rec(boiler) for _ in range(8)]
    assert [r for _, r in LineDedup(max_count=6).run([only_boiler])[0]] == ["line_dedup_empty"] * 8
