"""The curation report: per step and per language, documents in, kept, dropped and why; samples; throughput.

Built from the ``NNNNN.stats.json`` files every phase leaves (so a resumed run reports the
whole run, not just the files it redid), written atomically as ``work_dir/report.json``,
and rendered as rich tables by :func:`report_tables`.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

from herd.data.decontam import Decontaminate, benchmark_report


def _merge_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (Linux reports KiB)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"main": round(me, 1), "largest_worker": round(kids, 1)}


def build_report(work_dir: Path, phases: list, n_files: int, *, seconds: float, workers: int,
                 samples_per_reason: int = 5) -> dict[str, Any]:
    steps: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    kinds: dict[str, Any] = {}
    for phase in phases:
        for s in ([phase.global_step] if phase.global_step else []) + list(phase.steps):
            kinds[s.name] = s
    input_docs = output_docs = 0
    languages: dict[str, int] = {}
    busy = 0.0
    for phase in phases:
        for i in range(n_files):
            path = phase.directory / f"{i:05d}.stats.json"
            if not path.exists():
                continue
            st = json.loads(path.read_text())
            busy += st["seconds"]
            if phase.index == 0:
                input_docs += st["input_docs"]
            if phase is phases[-1]:
                output_docs += st["output_docs"]
                _merge_counts(languages, st.get("output_languages", {}))
            for name, s in st["steps"].items():
                if name not in steps:
                    order.append(name)
                    steps[name] = {"in": 0, "dropped": {}, "languages": {}, "counters": {}, "samples": {}}
                agg = steps[name]
                agg["in"] += s["in"]
                _merge_counts(agg["dropped"], s["dropped"])
                _merge_counts(agg["counters"], s.get("counters", {}))
                for lang, v in s["languages"].items():
                    row = agg["languages"].setdefault(lang, {"in": 0, "dropped": 0})
                    row["in"] += v["in"]
                    row["dropped"] += v["dropped"]
                for reason, items in s["samples"].items():
                    bucket = agg["samples"].setdefault(reason, [])
                    bucket.extend(items[: max(0, samples_per_reason - len(bucket))])
    out_steps = []
    for name in order:
        agg = steps[name]
        n_drop = sum(agg["dropped"].values())
        entry = {"name": name, "kind": getattr(kinds.get(name), "kind", name), "in": agg["in"],
                 "kept": agg["in"] - n_drop, "dropped": n_drop, "reasons": dict(sorted(agg["dropped"].items())),
                 "languages": {lang: {**v, "kept": v["in"] - v["dropped"]}
                               for lang, v in sorted(agg["languages"].items())},
                 "samples": agg["samples"]}
        step = kinds.get(name)
        if isinstance(step, Decontaminate):
            entry["benchmarks"] = benchmark_report(agg["counters"], step.items)
        elif agg["counters"]:
            entry["counters"] = agg["counters"]
        out_steps.append(entry)
    report = {
        "work_dir": str(work_dir), "files": n_files, "input_documents": input_docs, "output_documents": output_docs,
        "kept_fraction": round(output_docs / input_docs, 4) if input_docs else 0.0,
        "output_languages": dict(sorted(languages.items(), key=lambda kv: -kv[1])),
        "seconds": round(seconds, 3), "workers": workers,
        "documents_per_second": round(input_docs / seconds, 1) if seconds > 0 else 0.0,
        "documents_per_worker_second": round(input_docs / busy, 1) if busy > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(), "steps": out_steps,
    }
    tmp = work_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    tmp.replace(work_dir / "report.json")
    return report


def report_tables(report: dict[str, Any]) -> list[Any]:
    """rich Tables: one row per step (top reasons), one per output language, one per benchmark."""
    from rich.table import Table

    steps = Table("step", "in", "kept", "dropped", "%", "why (top reasons)", title="curation: per step")
    for s in report["steps"]:
        pct = f"{100 * s['dropped'] / s['in']:.1f}" if s["in"] else "-"
        top = sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:4]
        steps.add_row(s["name"], str(s["in"]), str(s["kept"]), str(s["dropped"]), pct,
                      ", ".join(f"{r} {n}" for r, n in top) or "-")
    langs = Table("language", "documents kept", title="output per language")
    for lang, n in report["output_languages"].items():
        langs.add_row(lang, str(n))
    tables = [steps, langs]
    for s in report["steps"]:
        if "benchmarks" in s:
            t = Table("benchmark", "items", "items hit", "documents hit", title=f"decontamination ({s['name']})")
            for name, row in s["benchmarks"].items():
                t.add_row(name, str(row.get("items", "?")), str(row["items_hit"]), str(row["documents"]))
            tables.append(t)
    return tables
