"""Near-duplicate dedup on a generated corpus with known clusters: precision/recall per true Jaccard band.

Base documents are real English (standard-library docstrings); each gets copies with scattered
word edits (substitutions) and with contiguous insertions or deletions at several rates. The
true word-5-gram Jaccard of every pair is computed exactly (shingle sets, same normalisation),
so each removed document's best true match is known.
"""

from __future__ import annotations

import random
from collections import defaultdict

from herd.data.dedup import MinHashDedup, shingles
from tests.data.curate_corpus import stdlib_docs

BANDS = [(0.0, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.01)]


def _variants(doc: str, donor: str, rng: random.Random) -> list[str]:
    words, donor_words = doc.split(), donor.split()
    out = []
    for rate in (0.01, 0.03, 0.06, 0.12):  # scattered substitutions
        w = list(words)
        for i in rng.sample(range(len(w)), max(1, int(rate * len(w)))):
            w[i] = rng.choice(donor_words)
        out.append(" ".join(w))
    for frac in (0.05, 0.15, 0.35):  # one contiguous deletion, or insertion of a donor span
        n = max(1, int(frac * len(words)))
        i = rng.randrange(0, len(words) - n)
        out.append(" ".join(words[:i] + words[i + n:]))
        j = rng.randrange(0, max(1, len(donor_words) - n))
        out.append(" ".join(words[:i] + donor_words[j:j + n] + words[i:]))
    return out


def _best_matches(sets: list[set[bytes]]) -> tuple[list[float], dict[tuple[int, int], float]]:
    index: dict[bytes, list[int]] = defaultdict(list)
    for d, s in enumerate(sets):
        for g in s:
            index[g].append(d)
    best = [0.0] * len(sets)
    pairs: dict[tuple[int, int], float] = {}
    for a, s in enumerate(sets):
        overlap: dict[int, int] = defaultdict(int)
        for g in s:
            for b in index[g]:
                if b != a:
                    overlap[b] += 1
        for b, inter in overlap.items():
            j = inter / (len(s) + len(sets[b]) - inter)
            best[a] = max(best[a], j)
            if a < b and j >= 0.5:
                pairs[(a, b)] = j
    return best, pairs


def test_minhash_recall_and_no_false_removals(capsys):
    rng = random.Random(0)
    base = [d for d in stdlib_docs(min_words=150) if len(d.split()) <= 1500][:60]
    docs = []
    for k, d in enumerate(base):
        docs.append(d)
        docs.extend(_variants(d, base[(k + 1) % len(base)], rng))
    rng.shuffle(docs)
    step = MinHashDedup()
    half = len(docs) // 2  # two "files": the decision spans files, as in the pipeline
    files = [[{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(docs[:half])],
             [{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(docs[half:], half)]]
    decisions = [reason for f in step.run(files) for _, reason in f]
    removed = [r is not None for r in decisions]
    best, pairs = _best_matches([set(shingles(t, 5)) for t in docs])
    # no document removed whose best true match is below 0.5
    false_removals = [best[i] for i, r in enumerate(removed) if r and best[i] < 0.5]
    lines = ["band        pairs  caught  recall | removed  (best match in band)"]
    for lo, hi in BANDS:
        band_pairs = [(a, b) for (a, b), j in pairs.items() if lo <= j < hi]
        caught = sum(removed[a] or removed[b] for a, b in band_pairs)
        n_removed = sum(1 for i, r in enumerate(removed) if r and lo <= best[i] < hi)
        rec = caught / len(band_pairs) if band_pairs else float("nan")
        lines.append(f"[{lo:.1f},{min(hi, 1):.1f})  {len(band_pairs):5d}  {caught:6d}  {rec:6.3f} | {n_removed:7d}")
    hi_pairs = [(a, b) for (a, b), j in pairs.items() if j >= 0.8]
    recall_08 = sum(removed[a] or removed[b] for a, b in hi_pairs) / len(hi_pairs)
    with capsys.disabled():
        print(f"\nMinHash dedup (5-gram, 32x4, verify 0.7) on {len(docs)} docs, {sum(removed)} removed")
        print("\n".join(lines))
    assert len(hi_pairs) > 100
    assert recall_08 >= 0.95, recall_08
    assert false_removals == []
    # precision: every removed document really has a near twin (>= 0.5), and most have >= 0.7
    assert sum(best[i] >= 0.7 for i, r in enumerate(removed) if r) >= 0.95 * sum(removed)


def test_band_prefilter_decides_like_every_document_indexed():
    """fit() indexes only documents sharing a band with another; the decisions must be those of indexing all."""
    import numpy as np

    from tests.data.minhash_reference import fit_every_document_indexed, synthetic_scans

    scans = synthetic_scans(3000, seed=1)
    step = MinHashDedup()
    shared = np.concatenate(step.shared_bands(scans)).any(axis=1)
    assert 0.2 < shared.mean() < 0.7  # both kinds present: the pre-filter decides something
    ours, reference = step.fit(scans), fit_every_document_indexed(step, scans)
    assert sum(map(len, ours)) > 300
    assert all(np.array_equal(a, b) for a, b in zip(ours, reference, strict=True))
