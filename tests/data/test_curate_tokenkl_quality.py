"""Token-KL outlier filter on real text, and the fastText quality classifier (train → score → threshold)."""

from __future__ import annotations

import base64
import hashlib
import json
import random

import numpy as np
import pytest

from herd.data.tokenkl import TokenKL
from tests.data.curate_corpus import stdlib_docs


def test_token_kl_default_separates_real_text_from_outliers(capsys):
    real = stdlib_docs(min_words=80)
    rng = random.Random(0)
    outliers = [" ".join(hashlib.sha1(str(i).encode()).hexdigest() for i in range(120)),
                " ".join(base64.b64encode(rng.randbytes(30)).decode() for _ in range(60)),
                " ".join(rng.choice(["cheap", "viagra", "casino", "bonus", "free", "pills", "slots", "jackpot"])
                         for _ in range(200))]
    files = [[{"id": str(i), "text": t, "meta": {}} for i, t in enumerate(real)],
             [{"id": f"o{i}", "text": t, "meta": {}} for i, t in enumerate(outliers)]]
    out = TokenKL().run(files)
    kl_real = [r["meta"]["token_kl"] for r, _ in out[0] if "token_kl" in r["meta"]]
    with capsys.disabled():
        print(f"\ntoken KL on {len(kl_real)} real docs: median {np.median(kl_real):.2f}, "
              f"p99 {np.percentile(kl_real, 99):.2f}, max {max(kl_real):.2f}; outliers "
              f"{[r['meta']['token_kl'] for r, _ in out[1]]}")
    assert sum(reason is not None for _, reason in out[0]) <= len(real) // 100  # at most 1 % of real text
    assert [reason for _, reason in out[1]] == ["token_kl_outlier"] * 3


def test_fasttext_quality_classifier(tmp_path):
    pytest.importorskip("fasttext")
    from herd.data.quality import QualityScore, read_labeled, train_quality

    good = stdlib_docs(min_words=60)
    rng = random.Random(0)
    spam_words = ["cheap", "buy", "now", "click", "here", "best", "deal", "free", "shipping", "casino", "win", "!!!"]
    bad = [" ".join(rng.choice(spam_words) for _ in range(rng.randint(30, 80))) for _ in range(len(good))]
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                               for t, lab in [(g, "hq") for g in good[1:]] + [(b, "lq") for b in bad[1:]]))
    metrics = train_quality(read_labeled(labeled), tmp_path / "q.bin", epoch=5, bucket=20_000)
    assert metrics["labels"] == ["hq", "lq"] and metrics["valid_precision"] >= 0.95
    step = QualityScore(model=str(tmp_path / "q.bin"), threshold=0.5)
    held_good = {"id": "g", "text": good[0], "meta": {}}
    held_bad = {"id": "b", "text": bad[0], "meta": {}}
    assert step.process(held_good) is None and held_good["meta"]["quality_score"] > 0.5
    assert step.process(held_bad) == "low_quality" and held_bad["meta"]["quality_score"] < 0.5


def test_label_with_a_herd_model_matches_a_manual_forward(llama3_tokenizer_path):
    import torch

    from herd.data.quality import label_with_model
    from herd.tokenizer import ChatFormat, Message, Tokenizer
    from tests.conftest import make_tiny_model

    tok = Tokenizer.load(llama3_tokenizer_path)
    model = make_tiny_model("tiny", vocab_size=128256)
    rows = label_with_model(["A short document about bridges."], model, tok)
    assert rows[0]["label"] in ("hq", "lq") and 0.0 <= rows[0]["p_yes"] <= 1.0
    # the same number from a forward pass written out here
    from herd.data.quality import QUALITY_CRITERIA

    ids = ChatFormat(tok).encode_dialog_prompt([
        Message("system", QUALITY_CRITERIA),
        Message("user", "Document:\nA short document about bridges.\n\nIs this a good document? Answer yes or no.")])
    logp = torch.log_softmax(model(torch.tensor([ids]))[0, -1].float(), -1)
    yes = torch.logsumexp(logp[[tok.encode(w)[0] for w in ("yes", "Yes")]], 0).exp()
    no = torch.logsumexp(logp[[tok.encode(w)[0] for w in ("no", "No")]], 0).exp()
    assert rows[0]["p_yes"] == pytest.approx((yes / (yes + no)).item(), abs=1e-4)
