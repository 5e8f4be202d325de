"""End to end: readers, phases, report, the CLI, and resuming after a kill."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from herd.cli import app
from herd.data.config import load_config
from herd.data.pipeline import read_output
from tests.data.curate_corpus import ENGLISH, FRENCH, GERMAN, stdlib_docs

CONFIG = """
[curate]
work_dir = "{work}"
workers = {workers}
samples_per_reason = 2

[[input]]
path = "{raw}"
source = "web"

[[step]]
type = "url_filter"

[[step]]
type = "langid"
candidates = ["en", "de", "fr"]
keep = ["en", "de"]

[[step]]
type = "gopher_quality"
languages = ["en"]

[[step]]
type = "exact_dedup"

[[step]]
type = "minhash_dedup"

[[step]]
type = "pii"
"""


def _corpus(raw: Path, n_files: int = 4) -> list[dict]:
    from herd.data.heuristics import GopherQuality

    gopher = GopherQuality()  # prose-like docstrings (code-heavy ones fail Gopher's alpha-word ratio)
    docs = [d for d in stdlib_docs(min_words=100) if gopher.process({"text": d, "meta": {}}) is None][:40]
    rows = []
    for i, d in enumerate(docs):
        rows.append({"id": f"d{i}", "text": d + " Contact: someone@example.com.", "url": f"https://docs.example/{i}"})
    rows.append({"id": "dup-exact", "text": docs[0] + " Contact: someone@example.com.", "url": "https://a.example/x"})
    rows.append({"id": "dup-near", "text": docs[1].replace("the", "a", 2) + " Contact: someone@example.com.",
                 "url": "https://b.example/y"})
    rows.append({"id": "porn-url", "text": docs[2], "url": "https://example.com/free-porn"})
    rows.append({"id": "french", "text": FRENCH * 3, "url": "https://fr.example/1"})
    rows.append({"id": "german", "text": GERMAN * 3, "url": "https://de.example/1"})
    rows.append({"id": "short", "text": ENGLISH[:120], "url": "https://c.example/1"})
    raw.mkdir(parents=True)
    for f in range(n_files):
        part = rows[f::n_files]
        with gzip.open(raw / f"part-{f}.jsonl.gz", "wt") as out:
            out.writelines(json.dumps(r) + "\n" for r in part)
    return rows


def _write_config(tmp_path: Path, workers: int = 2) -> Path:
    cfg = tmp_path / "curate.toml"
    cfg.write_text(CONFIG.format(work=tmp_path / "work", raw=tmp_path / "raw", workers=workers))
    return cfg


def test_cli_run_report_and_outputs(tmp_path):
    _corpus(tmp_path / "raw")
    cfg = _write_config(tmp_path, workers=2)
    res = CliRunner().invoke(app, ["curate", "run", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["url_filter"]["reasons"] == {"url_banned_word": 1}
    assert steps["langid"]["reasons"] == {"language_not_kept": 1}
    assert steps["langid"]["languages"]["fr"] == {"in": 1, "dropped": 1, "kept": 0}
    assert steps["gopher_quality"]["reasons"] == {"gopher_short_doc": 1}
    assert steps["gopher_quality"]["languages"].keys() == {"en"}  # German skipped it
    assert steps["exact_dedup"]["reasons"] == {"exact_duplicate": 1}
    # the standard library has near-duplicate docstrings of its own; ours must be among the removed
    assert "dup-near" in [x["id"] for x in steps["minhash_dedup"]["samples"]["near_duplicate"]]
    assert steps["pii"]["counters"]["email"] == report["output_documents"] - 1  # all but the German page
    assert steps["url_filter"]["samples"]["url_banned_word"][0]["id"] == "porn-url"
    out = list(read_output(sorted((tmp_path / "work" / "output").glob("*.jsonl.gz"))))
    ids = {r["id"] for r in out}
    assert "german" in ids and not ids & {"dup-exact", "dup-near", "porn-url", "french", "short"}
    assert len(out) == report["input_documents"] - 4 - steps["minhash_dedup"]["dropped"]
    assert all("someone@example.com" not in r["text"] and r["meta"]["source"] == "web" for r in out)
    assert report["output_documents"] == len(out) == report["output_languages"]["en"] + 1
    assert (tmp_path / "work" / "report.json").exists()
    # a different config on the same work_dir is refused, naming the directory
    res = CliRunner().invoke(app, ["curate", "run", "--config", str(cfg), "step.2.min_doc_words=10"])
    assert res.exit_code == 2 and "different configuration" in res.output


def test_bad_step_key_is_named(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[curate]\nwork_dir = "w"\n[[input]]\npath = "x"\n[[step]]\ntype = "gopher_quality"\n'
                   "min_doc_wrds = 3\n")
    from herd.data.records import CurateError

    with pytest.raises(CurateError, match=r"step 0 \(gopher_quality\): unknown key\(s\) min_doc_wrds"):
        load_config(cfg)


def test_readers_parquet_zst_text_warc(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    from herd.data.readers import InputSpec, expand_inputs, read_task

    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"], "url": ["u1", "u2"]}), raw / "a.parquet")
    (raw / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"id": "z1", "text": "zst doc"}\n'))
    (raw / "texts").mkdir()
    (raw / "texts" / "one.txt").write_text("a whole text file")
    html = (f"<html><body><nav>Home | About</nav><article><h1>Bridge</h1><p>{ENGLISH}</p><pre>x = 1\n"
            f"if x:\n    print(x)</pre><p>{ENGLISH}</p></article></body></html>").encode()
    with open(raw / "c.warc.gz", "wb") as f:
        w = WARCWriter(f, gzip=True)
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record("https://news.example/bridge", "response", payload=io.BytesIO(html),
                                            http_headers=headers))
    tasks = expand_inputs([InputSpec(str(raw), source="mixed")])
    recs = {t.kind: list(read_task(t)) for t in tasks}
    assert [r["text"] for r in recs["parquet"]] == ["parquet one", "parquet two"]
    assert recs["parquet"][1]["meta"]["url"] == "u2"
    assert recs["jsonl"][0]["id"] == "z1" and recs["text"][0]["text"] == "a whole text file"
    page = recs["warc"][0]
    assert page["meta"]["url"] == "https://news.example/bridge" and "Home | About" not in page["text"]
    assert "if x:\n    print(x)" in page["text"] and "#" not in page["text"] and "**" not in page["text"]


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return ["X", "0"]


def _state(pid: int) -> str:
    return _stat(pid)[0]


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _stat(int(p.name))[1] == str(pid)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_resume_after_kill_redoes_only_unfinished_files(tmp_path):
    _corpus(tmp_path / "raw", n_files=8)
    cfg = _write_config(tmp_path, workers=2)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    code = ("import sys, time; from herd.data.config import load_config\n"
            "import herd.data.pipeline as p\n"
            "orig = p.run_file\n"
            "def slow(*a, **k):\n    time.sleep(1.5); return orig(*a, **k)\n"
            "p.run_file = slow\n"
            f"load_config({str(cfg)!r}).run()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    phase0 = tmp_path / "work" / "phase-0"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(phase0.glob("*.done"))) < 3:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 1.0  # the pool workers die with the main process at once, none keeps writing
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() and _state(w) != "Z" for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and _state(w) != "Z"]
    done_before = {p.name: p.stat().st_mtime_ns for p in phase0.glob("*.jsonl.gz")}
    assert 3 <= len(done_before) < 8
    result = load_config(cfg).run()
    assert result.files_skipped == len(done_before)
    assert {p.name: p.stat().st_mtime_ns for p in phase0.glob("*.jsonl.gz") if p.name in done_before} == done_before
    # same result as a clean run
    clean = load_config(cfg, [f"curate.work_dir={json.dumps(str(tmp_path / 'clean'))}"]).run()
    resumed = [r["id"] for r in read_output(result.output_files)]
    assert resumed == [r["id"] for r in read_output(clean.output_files)]
    assert result.report["input_documents"] == clean.report["input_documents"]
