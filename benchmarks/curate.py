"""Curation throughput: herd's filter chain against datatrove's on the same documents, MinHash, and a big run.

1. **Filter chain, documents/s on one core**: Gopher quality → Gopher repetition → C4 quality,
   herd's steps (``herd.data.heuristics``) against datatrove's filters with their defaults
   (``GopherQualityFilter``, ``GopherRepetitionFilter``, ``C4QualityFilter``), each called
   in-process in a plain loop over the same documents (datatrove at its best: no executor,
   no writer, no stats files; its English word tokenizer is spaCy's, loaded before timing).
   Best of ``--repeats``, alternating the two. Decisions are compared too.
2. **MinHash signatures/s on one core**: herd's ``MinHashDedup.signature`` (datasketch
   MinHash, 128 permutations, word 5-grams) against datatrove's ``MinhashDedupSignature``
   hashing (its ``get_signature`` on the same texts, 14x8 = 112 hashes, its defaults).
3. **Pipeline run** (``--run-mb``, default 20 MB; ``--run-mb 1000`` for the 1 GB run): a
   generated JSONL.gz corpus (the documents above with 12 % of their words replaced per copy)
   through url filter → Gopher → exact → MinHash dedup → PII with
   ``--workers`` processes; reports documents/s and peak RSS of the main process and of the
   largest worker (memory must not grow with the corpus: compare two sizes).
4. **MinHash index memory** (``--index-docs``, default 50,000; 0 skips): bytes per document that
   ``MinHashDedup.fit`` allocates in the main process (tracemalloc peak, datasketch imported
   first, the scans' own signature arrays not counted), herd's fit against the reference that
   puts every document through datasketch's ``MinHashLSH`` and keeps every kept signature
   (herd's fit before the band pre-filter), on generated signatures with known near copies; the
   two must decide the same.

The corpus is real English (standard-library docstrings) and pages built to trip each rule,
repeated with word-level noise to ``--docs`` documents. The machine is shared with other
workers: timings are noisy, the ratios less so.

    python benchmarks/curate.py
    python benchmarks/curate.py --docs 5000 --run-mb 1000 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_RATIO = 1.0


def corpus(n: int, seed: int = 0) -> list[str]:
    from tests.data.curate_corpus import ENGLISH, stdlib_docs

    base = stdlib_docs(min_words=40)
    base += [ENGLISH * 3, "\n".join(f"- item {i} of the list" for i in range(60)), ENGLISH + " #seo" * 50,
             ENGLISH.replace(". ", ".\n") + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = base[i % len(base)].split(" ")
        for _ in range(max(1, len(words) // 50)):
            words[rng.randrange(len(words))] = rng.choice(words)
        out.append(" ".join(words))
    return out


def bench_filters(docs: list[str], repeats: int) -> tuple[float, float, float]:
    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    from herd.data.heuristics import C4Quality, GopherQuality, GopherRepetition

    ours = [GopherQuality(), GopherRepetition(), C4Quality()]
    theirs = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter()]
    theirs[0].filter(Document(text=docs[0], id="warm"))  # load spaCy before timing

    def run_ours() -> list[bool]:
        keep = []
        for t in docs:
            rec = {"id": "", "text": t, "meta": {}}
            keep.append(all(s.process(rec) is None for s in ours))
        return keep

    def run_theirs() -> list[bool]:
        keep = []
        for i, t in enumerate(docs):
            doc = Document(text=t, id=str(i))
            ok = True
            for f in theirs:
                r = f.filter(doc)
                if not (r is True or (isinstance(r, tuple) and r[0])):
                    ok = False
                    break
            keep.append(ok)
        return keep

    best_ours = best_theirs = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        k_ours = run_ours()
        best_ours = min(best_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        k_theirs = run_theirs()
        best_theirs = min(best_theirs, time.perf_counter() - t0)
    agree = sum(a == b for a, b in zip(k_ours, k_theirs, strict=True)) / len(docs)
    return len(docs) / best_ours, len(docs) / best_theirs, agree


def bench_minhash(docs: list[str]) -> tuple[float, float]:
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    from herd.data.dedup import MinHashDedup

    step = MinHashDedup()
    step.signature(docs[0])
    t0 = time.perf_counter()
    for t in docs:
        step.signature(t)
    ours = len(docs) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        theirs_step = MinhashDedupSignature(output_folder=tmp, config=MinhashConfig())
        theirs_step.get_signature(theirs_step.get_shingles(docs[0]))
        t0 = time.perf_counter()
        for t in docs:  # datatrove's two calls per document: shingles (spaCy words) then the signature
            theirs_step.get_signature(theirs_step.get_shingles(t))
        theirs = len(docs) / (time.perf_counter() - t0)
    return ours, theirs


RUN_CONFIG = """
[curate]
work_dir = "{work}"
workers = {workers}
[[input]]
path = "{raw}"
source = "bench"
[[step]]
type = "url_filter"
[[step]]
type = "gopher_quality"
[[step]]
type = "exact_dedup"
[[step]]
type = "minhash_dedup"
[[step]]
type = "pii"
"""


def bench_run(mb: int, workers: int, docs: list[str], kill_after: int = 0, raw_dir: str | None = None) -> dict:
    """Generate ``mb`` MB of JSONL.gz and run ``herd curate run`` on it; with ``kill_after`` > 0, SIGKILL the run
    once that many phase-0 files are finished, then resume it and count the file passes it skipped."""
    import signal
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(raw_dir) if raw_dir else Path(tmp) / "raw"
        raw.mkdir(exist_ok=True)
        target, written, i, f = mb * 1_000_000, 0, 0, 0
        if any(raw.glob("*.jsonl.gz")):  # --raw DIR from an earlier run: reuse it
            target, f = 0, len(list(raw.glob("*.jsonl.gz")))
        rng = random.Random(1)
        vocab = sorted({w for d in docs for w in d.split()})
        per_file = max(target // max(16, workers * 8), 1)
        while written < target:
            with gzip.open(raw / f"part-{f:04d}.jsonl.gz", "wt", compresslevel=1) as out:
                size = 0
                while size < per_file and written < target:
                    words = docs[i % len(docs)].split(" ")
                    for _ in range(len(words) // 8):  # ~12 % of words replaced: mostly not near-duplicates
                        words[rng.randrange(len(words))] = rng.choice(vocab)
                    text = " ".join(words)
                    line = json.dumps({"id": str(i), "text": text, "url": f"https://example.org/{i}"}) + "\n"
                    out.write(line)
                    size += len(line)
                    written += len(line)
                    i += 1
            f += 1
        cfg = Path(tmp) / "curate.toml"
        work = Path(tmp) / "work"
        cfg.write_text(RUN_CONFIG.format(work=work, raw=raw, workers=workers))
        cmd = [sys.executable, "-m", "herd.cli", "curate", "run", "--config", str(cfg), "--json"]
        killed_with = 0
        if kill_after:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and len(list((work / "phase-0").glob("*.done"))) < kill_after:
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_with = len(list((work / "phase-0").glob("*.done")))
        before = {x.name: x.stat().st_mtime_ns for x in (work / "phase-0").glob("*.jsonl.gz")} if kill_after else {}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t0
        r = json.loads(out.stdout[out.stdout.index("{"):])
        after = {x.name: x.stat().st_mtime_ns for x in (work / "phase-0").glob("*.jsonl.gz")}
        skipped = sum(after.get(k) == v for k, v in before.items())  # finished files the resumed run left alone
        return {"documents": r["input_documents"], "kept": r["output_documents"], "seconds": r["seconds"],
                "documents_per_second": r["documents_per_second"], "peak_rss_mb": r["peak_rss_mb"], "files": f,
                "mb": mb, "killed_with_files_done": killed_with, "resumed_skipped": skipped,
                "resumed_seconds": round(seconds, 1)}


def bench_index_memory(n: int) -> tuple[float, float, float, float]:
    """(herd bytes/doc, reference bytes/doc, fraction of documents sharing a band, herd/reference seconds)."""
    import tracemalloc

    import datasketch  # noqa: F401  (its import is not the index)
    import numpy as np

    from herd.data.dedup import MinHashDedup
    from tests.data.minhash_reference import fit_every_document_indexed, synthetic_scans

    scans = synthetic_scans(n)
    step = MinHashDedup()
    out = []
    for fit in (step.fit, lambda s: fit_every_document_indexed(step, s)):
        tracemalloc.start()
        t0 = time.perf_counter()
        states = fit(scans)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out.append((peak / n, states, seconds))
    (ours, s_ours, t_ours), (ref, s_ref, t_ref) = out
    if not all(np.array_equal(a, b) for a, b in zip(s_ours, s_ref, strict=True)):
        raise SystemExit("MinHash fit decides differently from the reference")
    shared = float(np.concatenate(step.shared_bands(scans)).any(axis=1).mean())
    return ours, ref, shared, t_ours / t_ref


def run_report(args: argparse.Namespace, docs: list[str]) -> None:
    r = bench_run(args.run_mb, args.workers, docs, kill_after=args.kill_after, raw_dir=args.raw)
    rss = f"peak RSS main {r['peak_rss_mb']['main']:.0f} MB, largest worker {r['peak_rss_mb']['largest_worker']:.0f} MB"
    if args.kill_after:
        print(f"pipeline run: {r['mb']} MB, {r['files']} files, {r['documents']:,} docs → {r['kept']:,} kept; killed "
              f"(SIGKILL) with {r['killed_with_files_done']} phase-0 files done, resumed: "
              f"{r['resumed_skipped']} of them untouched (not redone), {r['resumed_seconds']} s to finish; {rss} "
              "(resumed run)")
        return
    print(f"pipeline run: {r['mb']} MB, {r['files']} files, {r['documents']:,} docs → {r['kept']:,} kept in "
          f"{r['seconds']:.1f} s with {args.workers} workers: {r['documents_per_second']:,.0f} docs/s; {rss}")
    print(f"figure: curate_pipeline_docs_per_s = {r['documents_per_second']:.0f} docs/s ({args.workers} workers)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1500, help="documents in the filter and MinHash comparisons")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-mb", type=int, default=20, help="generated corpus size for the pipeline run (0: skip)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--kill-after", type=int, default=0,
                    help="SIGKILL the run after this many phase-0 files are done, then resume it")
    ap.add_argument("--only-run", action="store_true", help="skip the filter and MinHash comparisons")
    ap.add_argument("--raw", help="keep the generated corpus in this directory (reused when it holds files)")
    ap.add_argument("--index-docs", type=int, default=50_000, help="documents in the MinHash memory comparison")
    args = ap.parse_args()

    docs = corpus(args.docs)
    print(f"{len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f} MB of text; 1 core each for filters and MinHash; "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)")
    if args.only_run:
        run_report(args, docs)
        return
    ours, theirs, agree = bench_filters(docs, args.repeats)
    ratio = ours / theirs
    print(f"filter chain (Gopher quality + repetition + C4): herd {ours:,.0f} docs/s, datatrove {theirs:,.0f} docs/s, "
          f"decisions agree on {100 * agree:.1f} %")
    m_ours, m_theirs = bench_minhash(docs[: min(len(docs), 1000)])
    print(f"MinHash signatures: herd (datasketch, 128 perms) {m_ours:,.0f} docs/s, datatrove (112 hashes) "
          f"{m_theirs:,.0f} docs/s")
    if args.run_mb:
        run_report(args, docs)
    if args.index_docs:
        ours_b, ref_b, shared, t_ratio = bench_index_memory(args.index_docs)
        print(f"MinHash fit memory, {args.index_docs:,} signatures ({100 * shared:.0f} % share a band with another): "
              f"herd {ours_b:,.0f} B/doc, every document in datasketch's MinHashLSH {ref_b:,.0f} B/doc; same "
              f"decisions; time {t_ratio:.2f}x the reference's (under tracemalloc)")
        print(f"figure: minhash_index_bytes_per_doc = {ours_b:.0f} B/doc (reference {ref_b:.0f} B/doc: "
              f"{ref_b / ours_b:.1f}x less)")
    status = "MET" if ratio >= TARGET_RATIO else "MISSED"
    print(f"figure: curate_filters_vs_datatrove = {ratio:.2f} x (target >= {TARGET_RATIO}) {status}")
    mh = m_ours / m_theirs
    print(f"figure: minhash_signatures_vs_datatrove = {mh:.2f} x (target >= {TARGET_RATIO}) "
          f"{'MET' if mh >= TARGET_RATIO else 'MISSED'}")
    print(f"figure: minhash_docs_per_s = {m_ours:.0f} docs/s")


if __name__ == "__main__":
    main()
