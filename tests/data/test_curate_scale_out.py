"""A curate config on datatrove's executors (herd.data.scale_out) against herd's own runner on the same input."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from herd.cli import app
from herd.data.config import load_config
from herd.data.dedup import shingles
from herd.data.pipeline import read_output
from herd.data.records import CurateError
from tests.data.curate_corpus import stdlib_docs

pytest.importorskip("datatrove")

from herd.data.scale_out import (  # noqa: E402
    ScaleOutOptions,
    build_datatrove_pipelines,
    candidate_probability,
    make_executors,
    run_on_datatrove,
)


def _config(tmp: Path, raw: Path, steps: str, extra: str = "") -> Path:
    cfg = tmp / "curate.toml"
    cfg.write_text(f'[curate]\nwork_dir = "{tmp / "work"}"\nworkers = 1\n\n[[input]]\npath = "{raw}"\n'
                   f'source = "web"\n\n{steps}\n{extra}')
    return cfg


def _steps(*types: str) -> str:
    return "\n".join(f'[[step]]\ntype = "{t}"\n' + ("min_num_sentences = 2\n" if t == "c4_quality" else "")
                     for t in types)


def _datatrove_output(out_dir: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(out_dir.glob("*.jsonl.gz")) for line in gzip.open(f, "rt")]


def _filter_corpus(raw: Path) -> None:
    """4 files; exact copies across and within files (some with other case/punctuation), short pages, e-mails."""
    docs = stdlib_docs(min_words=60, limit=80)
    rng = random.Random(0)
    raw.mkdir()
    for f in range(4):
        with open(raw / f"{f}.jsonl", "w") as out:
            for i in range(25):
                text = rng.choice(docs[:20]) if rng.random() < 0.4 else docs[20 + (f * 25 + i) % 60]
                if i % 9 == 0:
                    text = text.upper()  # still an exact duplicate after herd's normalisation
                if i % 11 == 0:
                    text = "Too short."
                if i % 7 == 0:
                    text += " Write to a.b@example.com for details."
                out.write(json.dumps({"id": f"{f}-{i}", "text": text, "url": f"https://e.org/{f}/{i}"}) + "\n")


def test_filters_and_exact_dedup_equal_herd_runner(tmp_path):
    _filter_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("gopher_quality", "pii", "exact_dedup", "c4_quality"))
    herd = {r["id"]: r for r in read_output(load_config(cfg).run().output_files)}
    stages = build_datatrove_pipelines(cfg, ScaleOutOptions(tasks=2, workers=1))
    assert [s.name for s in stages] == ["phase-0", "01-exact_dedup-find", "phase-1"]
    assert [s.tasks for s in stages] == [2, 1, 2]
    result = run_on_datatrove(cfg, ScaleOutOptions(tasks=2, workers=1))
    out = _datatrove_output(result.output_dir)
    assert len(out) == len({r["id"] for r in out})
    datatrove = {r["id"]: r for r in out}
    assert 10 < len(herd) < 80  # every stage dropped something and kept something
    assert datatrove.keys() == herd.keys()  # the same copy of each duplicate is kept (earliest in input order)
    for rid, rec in herd.items():
        assert datatrove[rid]["text"] == rec["text"]  # PII and C4 rewrites included
        extra = set(datatrove[rid]["meta"]) - set(rec["meta"])
        assert extra <= {"duplicate_count"}  # datatrove's exact-dedup filter notes cluster sizes
        assert {k: datatrove[rid]["meta"][k] for k in rec["meta"]} == rec["meta"]
    stats = (result.logging_dir / "phase-0" / "stats.json").read_text()
    assert "dropped_gopher_short_doc" in stats and '"email"' in stats  # herd's reasons and counters


def _near_dup_corpus(raw: Path, n_clusters: int = 12, copies: int = 4) -> dict[str, int]:
    """Clusters of a real document and ``copies`` edited copies (true 5-gram Jaccard >= 0.8 between any two members;
    different clusters < 0.2), and 6 pairs of half-alike documents (a third of one replaced: Jaccard ~0.5, LSH
    candidates that are not duplicates, each its own cluster), shuffled over 3 files."""
    base: list[str] = []
    for doc in (d for d in stdlib_docs(min_words=200) if len(d.split()) <= 900):
        s = set(shingles(doc, 5))  # the standard library has near-duplicate docstrings of its own: skip them
        if all(len(s & t) < 0.2 * len(s | t) for t in map(lambda d: set(shingles(d, 5)), base)):
            base.append(doc)
        if len(base) == n_clusters + 8:
            break
    rng = random.Random(1)
    records, cluster_of = [], {}
    for c, doc in enumerate(base):
        words = doc.split()
        variants = [doc]
        if c < n_clusters:
            for k in range(copies):
                w = list(words)
                for i in rng.sample(range(len(w)), max(1, len(w) // 250)):  # 0.4 % scattered substitutions
                    w[i] = rng.choice(words)
                cut = rng.randrange(0, len(w) - 10)
                variants.append(" ".join(w[:cut] + w[cut + 1 + k:]))  # and a short contiguous deletion
        for v, text in enumerate(variants):
            rid = f"c{c}-v{v}"
            records.append({"id": rid, "text": text})
            cluster_of[rid] = c
        if c >= len(base) - 6:  # a half-alike partner: its own cluster
            donor = base[c - 8].split()
            n = len(words) // 3
            i = rng.randrange(0, len(words) - n)
            records.append({"id": f"half{c}", "text": " ".join(words[:i] + donor[:n] + words[i + n:])})
            cluster_of[f"half{c}"] = len(base) + c
    rng.shuffle(records)
    raw.mkdir()
    for f in range(3):
        with open(raw / f"{f}.jsonl", "w") as out:
            out.writelines(json.dumps(r) + "\n" for r in records[f::3])
    return cluster_of


def test_near_dedup_keeps_one_per_cluster(tmp_path):
    cluster_of = _near_dup_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("minhash_dedup"))
    stages = build_datatrove_pipelines(cfg, ScaleOutOptions(tasks=2, workers=1))
    assert [s.name for s in stages] == ["phase-0", "01-minhash_dedup-buckets", "01-minhash_dedup-verify",
                                        "01-minhash_dedup-cluster", "phase-1"]
    assert [s.tasks for s in stages] == [2, 32, 32, 1, 2]  # 32 bands x 4 rows, herd's defaults
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for f in (tmp_path / "raw").iterdir() for line in
             f.open()}
    halves = [len(a & b) / len(a | b) for a, b in (
        (set(shingles(texts[rid], 5)), set(shingles(texts[f"c{rid[4:]}-v0"], 5))) for rid in texts
        if rid.startswith("half"))]
    assert len(halves) == 6 and all(0.4 < j < 0.6 for j in halves)
    result = run_on_datatrove(cfg, ScaleOutOptions(tasks=2, workers=1))
    kept = [cluster_of[r["id"]] for r in _datatrove_output(result.output_dir)]
    assert sorted(kept) == sorted(set(cluster_of.values()))  # one per cluster; the singletons and halves all kept
    herd = list(read_output(load_config(cfg).run().output_files))
    assert sorted(cluster_of[r["id"]] for r in herd) == sorted(kept)  # herd's runner agrees
    # the half-alike pairs were LSH candidates; herd's verification rejected them (datatrove alone would not)
    stats = json.loads((result.logging_dir / "01-minhash_dedup-verify" / "stats.json").read_text())[0]["stats"]
    assert stats["rejected_pairs"] >= 6 and stats["verified_pairs"] > 100  # (pairs counted once per shared band)


def test_unverified_lsh_probabilities_stated():
    # what dropping herd's verification would cost: pairs of true Jaccard 0.5 become duplicates 87 % of the time
    assert candidate_probability(0.5, 32, 4) == pytest.approx(0.873, abs=1e-3)
    assert candidate_probability(0.8, 32, 4) > 0.9999
    assert candidate_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)  # FineWeb's banding


def test_bad_executor_unsupported_step_and_options_are_named(tmp_path):
    with pytest.raises(CurateError, match="unknown executor 'spark'"):
        ScaleOutOptions(executor="spark")
    with pytest.raises(CurateError, match="scale_out.slurm needs partition and time"):
        ScaleOutOptions(executor="slurm")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"text": "x"}\n')
    cfg = _config(tmp_path, tmp_path / "raw", _steps("pii", "line_dedup"))
    with pytest.raises(CurateError, match=r"step 1 \(line_dedup.*CCNet line-count"):
        build_datatrove_pipelines(cfg)
    cfg = _config(tmp_path, tmp_path / "raw", _steps("pii"), "[scale_out]\nexecuter = \"local\"\n")
    with pytest.raises(CurateError, match=r"\[scale_out\]: unknown key\(s\) executer"):
        build_datatrove_pipelines(cfg)
    res = CliRunner().invoke(app, ["curate", "run", "--config", str(cfg), "--executor", "spark"])
    assert res.exit_code != 0 and "executer" in res.output
    cfg = _config(tmp_path, tmp_path / "raw", _steps("pii"))
    res = CliRunner().invoke(app, ["curate", "run", "--config", str(cfg), "--executor", "spark"])
    assert res.exit_code != 0 and "unknown executor 'spark'" in res.output


def test_slurm_executors_chain_the_stages(tmp_path):
    _filter_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("pii", "exact_dedup", "minhash_dedup"),
                  '[scale_out]\nexecutor = "slurm"\ntasks = 8\nslurm = { partition = "cpu", time = "01:00:00", '
                  'cpus_per_task = 2 }\n')
    options = ScaleOutOptions.from_config(load_config(cfg).config)
    stages = build_datatrove_pipelines(cfg, options)
    executors = make_executors(stages, options, tmp_path / "logs")
    assert [type(e).__name__ for e in executors] == ["SlurmPipelineExecutor"] * 7
    assert [e.tasks for e in executors] == [8, 1, 8, 32, 32, 1, 8]
    assert [e.pipeline for e in executors] == [s.pipeline for s in stages]
    assert executors[0].depends is None and all(e.depends is p for p, e in zip(executors, executors[1:], strict=False))
    assert executors[3].partition == "cpu" and executors[3].cpus_per_task == 2
    assert executors[3].job_name == "herd-curate-02-minhash_dedup-buckets"


def test_ray_executors_construct(tmp_path):  # datatrove imports ray only when run() starts
    _filter_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("pii", "exact_dedup"))
    options = ScaleOutOptions(executor="ray", tasks=4, ray={"cpus_per_task": 2})
    executors = make_executors(build_datatrove_pipelines(cfg, options), options, tmp_path / "logs")
    assert [type(e).__name__ for e in executors] == ["RayPipelineExecutor"] * 3
    assert [e.tasks for e in executors] == [4, 1, 4] and executors[2].depends is executors[1]


def test_cli_executor_local(tmp_path):
    _filter_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("gopher_quality", "pii"))
    res = CliRunner().invoke(app, ["curate", "run", "--config", str(cfg), "--executor", "local", "--tasks", "2",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    out = _datatrove_output(tmp_path / "work" / "datatrove" / "output")
    herd = list(read_output(load_config(cfg).run().output_files))
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in herd)
    assert all("_herd_input_file" not in r["meta"] for r in out)


@pytest.mark.slow
def test_two_worker_processes_give_the_same_output(tmp_path):
    """workers=2: the steps are pickled into datatrove's forkserver pool (as they are for Slurm and Ray)."""
    _filter_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("gopher_quality", "pii", "exact_dedup", "minhash_dedup"))
    one = _datatrove_output(run_on_datatrove(cfg, ScaleOutOptions(tasks=3, workers=1)).output_dir)
    (tmp_path / "work" / "datatrove").rename(tmp_path / "one")
    two = _datatrove_output(run_on_datatrove(cfg, ScaleOutOptions(tasks=3, workers=2)).output_dir)
    assert {r["id"]: r["text"] for r in two} == {r["id"]: r["text"] for r in one}
    herd = list(read_output(load_config(cfg).run().output_files))
    # as many kept; which member of a near-duplicate cluster survives is datatrove's choice (not the earliest)
    assert len(herd) == len(two)


def test_shipped_scale_out_config_builds():
    cfg = Path(__file__).resolve().parents[2] / "configs" / "curate-scale-out.toml"
    options = ScaleOutOptions.from_config(load_config(cfg).config)
    stages = build_datatrove_pipelines(cfg, options)
    assert [s.name for s in stages] == ["phase-0", "01-exact_dedup-find", "phase-1", "02-minhash_dedup-buckets",
                                        "02-minhash_dedup-verify", "02-minhash_dedup-cluster", "phase-2"]
    assert [type(x).__name__ for x in stages[0].pipeline] == ["HerdInputReader"] + ["HerdStepFilter"] * 6 + [
        "HerdJsonlWriter", "ExactDedupSignature"]
    assert stages[0].tasks == 64 and options.executor == "local"


def test_dedup_languages_restriction_matches_herd_runner(tmp_path):
    """``languages = ["en"]`` on the dedup steps: German copies are left alone on both runners."""
    docs = stdlib_docs(min_words=100, limit=6)
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in range(2):
        with open(raw / f"{f}.jsonl", "w") as out:
            for i, d in enumerate(docs):
                for lang in ("en", "de"):  # the same texts labelled German: never deduplicated
                    text = d if f == 0 else d.replace(" the ", " the the ", 1)  # file 1: near copies
                    out.write(json.dumps({"id": f"{f}-{i}-{lang}", "text": text, "language": lang}) + "\n")
                out.write(json.dumps({"id": f"{f}-{i}-en-exact", "text": d.upper(), "language": "en"}) + "\n")
    steps = ('[[step]]\ntype = "exact_dedup"\nlanguages = ["en"]\n\n'
             '[[step]]\ntype = "minhash_dedup"\nlanguages = ["en"]\nbands = 8\nrows = 4\n')
    cfg = _config(tmp_path, raw, steps)
    herd = sorted(r["id"] for r in read_output(load_config(cfg).run().output_files))
    out = sorted(r["id"] for r in _datatrove_output(run_on_datatrove(cfg, ScaleOutOptions(tasks=2,
                                                                                          workers=1)).output_dir))
    assert sorted(x for x in herd if x.endswith("-en")) == sorted(f"0-{i}-en" for i in range(6))
    assert sum(x.endswith("-de") for x in herd) == 12 and len(herd) == 18
    assert out == herd


def test_rerun_resumes_and_another_config_is_refused(tmp_path):
    _filter_corpus(tmp_path / "raw")
    cfg = _config(tmp_path, tmp_path / "raw", _steps("gopher_quality", "pii"))
    result = run_on_datatrove(cfg, ScaleOutOptions(tasks=2, workers=1))
    first = {f.name: f.stat().st_mtime_ns for f in result.output_dir.glob("*.jsonl.gz")}
    run_on_datatrove(cfg, ScaleOutOptions(tasks=2, workers=1))  # every task completed: nothing is redone
    assert {f.name: f.stat().st_mtime_ns for f in result.output_dir.glob("*.jsonl.gz")} == first
    other = _config(tmp_path, tmp_path / "raw", _steps("pii"))
    with pytest.raises(CurateError, match="different configuration"):
        run_on_datatrove(other, ScaleOutOptions(tasks=2, workers=1))
    n = len(_datatrove_output(run_on_datatrove(other, ScaleOutOptions(tasks=2, workers=1),
                                               overwrite=True).output_dir))
    assert n == 100  # the new config ran: pii alone drops nothing of the 4 x 25 documents
