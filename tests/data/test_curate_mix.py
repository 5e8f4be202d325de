"""The mix step: groups → token shards + [[data.sources]] that herd.train's PackedLoader mixes by."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from typer.testing import CliRunner

from herd.cli import app
from herd.data.mix import plan_mix, write_mix
from herd.data.records import CurateError
from tests.data.curate_corpus import ENGLISH, FRENCH, GERMAN, stdlib_docs


def _curated(path: Path) -> None:
    docs = stdlib_docs(min_words=60, limit=60)
    rows = [{"id": f"c{i}", "text": d, "meta": {"source": "code-docs", "category": "code"}} for i, d in enumerate(docs)]
    rows += [{"id": f"n{i}", "text": ENGLISH, "meta": {"source": "news", "category": "general"}} for i in range(30)]
    rows += [{"id": f"m{i}", "text": t, "meta": {"source": "news", "category": "multilingual"}}
             for i, t in enumerate([FRENCH, GERMAN] * 10)]
    path.mkdir(parents=True)
    with gzip.open(path / "00000.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_mix_writes_shards_the_trainer_mixes_at_the_weights(tmp_path, llama3_tokenizer_path):
    from herd.tokenizer import Tokenizer
    from herd.train.loader import PackedLoader, Source

    _curated(tmp_path / "output")
    tok = Tokenizer.load(llama3_tokenizer_path)
    weights = {"general": 0.5, "code": 0.3, "multilingual": 0.2}
    plan = write_mix([tmp_path / "output"], tmp_path / "mix", weights, by="category", tokenizer=tok,
                     token_budget=100_000, workers=1)
    mix_toml = tomllib.loads((tmp_path / "mix" / "mix.toml").read_text())
    sources = {s["name"]: s for s in mix_toml["data"]["sources"]}
    assert {k: round(v["weight"], 6) for k, v in sources.items()} == weights
    assert plan.groups["general"]["documents"] == 30
    assert plan.groups["general"]["tokens"] == 30 * (len(tok.encode(ENGLISH)) + 2)  # + bos, eos
    assert plan.groups["general"]["epochs"] == pytest.approx(0.5 * 100_000 / plan.groups["general"]["tokens"],
                                                             rel=1e-3)
    loader = PackedLoader([Source(n, [Path(p) for p in s["paths"]], s["weight"]) for n, s in sources.items()],
                          seq_len=256, seed=0)
    for _ in range(60):
        loader.next_batch(8)
    realised = loader.mix()
    for name, w in weights.items():
        assert realised[name]["share"] == pytest.approx(w, abs=0.05), realised


def test_mix_refuses_unweighted_groups_and_cli(tmp_path):
    _curated(tmp_path / "output")
    with pytest.raises(CurateError, match="groups without a weight: multilingual"):
        write_mix([tmp_path / "output"], tmp_path / "m", {"general": 1, "code": 1}, by="category")
    with pytest.raises(CurateError, match="weights must be >= 0"):
        plan_mix({"a": {"documents": 1, "chars": 10}}, {"a": -1})
    res = CliRunner().invoke(app, ["curate", "mix", str(tmp_path / "output"), "-o", str(tmp_path / "m2"),
                                   "-w", "news=3", "-w", "code-docs=1"])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "m2" / "mix.json").read_text())
    assert plan["groups"]["news"]["weight"] == 0.75 and plan["groups"]["news"]["documents"] == 50
