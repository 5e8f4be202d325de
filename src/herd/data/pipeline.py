"""The curation pipeline: phases of streaming passes over files, in parallel, resumable.

Steps run in the order the config lists them. A :class:`~herd.data.records.GlobalStep`
(dedup, keep-latest-URL) needs the whole corpus, so it splits the chain into *phases*:

* phase 0 reads each input file, runs the per-document steps before the first global step,
  writes the survivors to ``work_dir/phase-0/NNNNN.jsonl.gz`` and, in the same pass, feeds
  them to the next global step's scan (``NNNNN.scan.pkl``);
* the main process fits the global step on all scans; phase 1 then streams each phase-0
  file again, applies the global decision and the per-document steps after it, and so on;
* the last phase writes ``work_dir/output/NNNNN.jsonl.gz``, the curated corpus.

Files are the unit of parallelism (a process pool; every worker streams one file at a time,
so memory does not grow with the corpus) and of resumption: a file's outputs are written to
temporary names and renamed, then a ``NNNNN.done`` marker is written last; a rerun skips
every file that has its marker, so a killed run redoes only the files it was in the middle
of. Workers die with the main process (Linux ``PR_SET_PDEATHSIG``) and write under
per-process temporary names, so a killed run leaves no writer behind to race the resumed one.
``work_dir/config.json`` pins the configuration a work directory belongs to.

Every file leaves a ``NNNNN.stats.json``: per step, documents in, dropped per reason, per
language, step counters (PII counts, contamination hits) and a few dropped samples per
reason; :mod:`herd.data.report` merges them into ``report.json`` and a table.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.data.readers import InputSpec, InputTask, expand_inputs, read_task
from herd.data.records import CurateError, GlobalStep, Record, Step, language_of

SAMPLE_CHARS = 1000


@dataclass
class Phase:
    index: int
    global_step: GlobalStep | None
    steps: list[Step]
    next_global: GlobalStep | None
    directory: Path


@dataclass
class PipelineResult:
    work_dir: Path
    output_files: list[Path]
    report: dict[str, Any]
    files_skipped: int = 0
    files_run: int = 0
    seconds: float = 0.0


def split_phases(steps: Sequence[Step | GlobalStep], work_dir: Path) -> list[Phase]:
    groups: list[tuple[GlobalStep | None, list[Step]]] = [(None, [])]
    for s in steps:
        if isinstance(s, GlobalStep):
            groups.append((s, []))
        elif isinstance(s, Step):
            groups[-1][1].append(s)
        else:
            raise CurateError(f"not a pipeline step: {s!r}")
    phases = []
    for i, (g, chain) in enumerate(groups):
        nxt = groups[i + 1][0] if i + 1 < len(groups) else None
        d = work_dir / ("output" if i == len(groups) - 1 else f"phase-{i}")
        phases.append(Phase(i, g, chain, nxt, d))
    return phases


def _name(i: int) -> str:
    return f"{i:05d}"


class _StepStats:
    __slots__ = ("n_in", "dropped", "languages", "samples")

    def __init__(self) -> None:
        self.n_in = 0
        self.dropped: dict[str, int] = {}
        self.languages: dict[str, list[int]] = {}
        self.samples: dict[str, list[dict[str, str]]] = {}

    def as_dict(self, counters: dict[str, int] | None) -> dict[str, Any]:
        return {"in": self.n_in, "dropped": self.dropped,
                "languages": {k: {"in": v[0], "dropped": v[1]} for k, v in self.languages.items()},
                "counters": dict(counters or {}), "samples": self.samples}


# Worker state: set once per process by the pool initializer (steps are not re-pickled per file,
# and lazily built models such as lingua's detector load once per process).
_STATE: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the main process dies.

    A pool worker outlives a main process killed with SIGKILL (or by the OOM killer) and would
    go on writing the file it was given while the resumed run writes the same file.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return


def _init_worker(phases: list[Phase], tasks: list[InputTask], counter: Any, samples: int, level: int,
                 parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    _STATE.update(phases=phases, tasks=tasks, counter=counter, samples=samples, level=level)


def _input_records(phase: Phase, file_index: int, prev_dir: Path | None) -> Iterator[Record]:
    if phase.index == 0:
        return read_task(_STATE["tasks"][file_index])
    return _read_jsonl_gz(prev_dir / f"{_name(file_index)}.jsonl.gz")


def _read_jsonl_gz(path: Path) -> Iterator[Record]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def run_file(phase: Phase, file_index: int, state: Any, prev_dir: Path | None) -> dict[str, Any]:
    """One phase over one file: stream, decide, write survivors (+ the next global step's scan), mark done."""
    t0 = time.perf_counter()
    samples_per_reason, counter = _STATE.get("samples", 5), _STATE.get("counter")
    chain: list[tuple[Any, Callable[[Record, int], str | None]]] = []
    if phase.global_step is not None:
        g = phase.global_step
        chain.append((g, lambda rec, pos, g=g: g.apply(rec, pos, state)))
    for s in phase.steps:
        chain.append((s, lambda rec, pos, s=s: s.process(rec)))
    for s, _ in chain:
        s.counters = {}
    stats = {s.name: _StepStats() for s, _ in chain}
    scan = phase.next_global.new_scan() if phase.next_global is not None else None
    phase.directory.mkdir(parents=True, exist_ok=True)
    name = _name(file_index)
    out_path = phase.directory / f"{name}.jsonl.gz"
    tmp_out = phase.directory / f".{name}.jsonl.gz.{os.getpid()}.tmp"  # per process: never two writers on one file
    n_in = n_out = bad = 0
    out_languages: dict[str, int] = {}
    read_stats = _StepStats()
    pending = 0
    with gzip.open(tmp_out, "wt", encoding="utf-8", compresslevel=_STATE.get("level", 3)) as out:
        for pos, rec in enumerate(_input_records(phase, file_index, prev_dir)):
            n_in += 1
            pending += 1
            if pending >= 256 and counter is not None:
                with counter.get_lock():
                    counter.value += pending
                pending = 0
            if "bad_record" in rec["meta"]:
                bad += 1
                read_stats.n_in += 1
                read_stats.dropped["bad_record"] = read_stats.dropped.get("bad_record", 0) + 1
                continue
            dropped = False
            for step, fn in chain:
                if not step.applies(rec):
                    continue
                st = stats[step.name]
                lang = language_of(rec)
                st.n_in += 1
                per_lang = st.languages.setdefault(lang, [0, 0])
                per_lang[0] += 1
                reason = fn(rec, pos)
                if reason is not None:
                    st.dropped[reason] = st.dropped.get(reason, 0) + 1
                    per_lang = st.languages.setdefault(language_of(rec), [0, 0])
                    if language_of(rec) != lang:  # language id itself dropped it: count it under what it found
                        st.languages[lang][0] -= 1
                        per_lang[0] += 1
                    per_lang[1] += 1
                    bucket = st.samples.setdefault(reason, [])
                    if len(bucket) < samples_per_reason:
                        bucket.append({"id": rec["id"], "text": rec["text"][:SAMPLE_CHARS]})
                    dropped = True
                    break
            if dropped:
                continue
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n_out += 1
            lang = language_of(rec)
            out_languages[lang] = out_languages.get(lang, 0) + 1
            if scan is not None:
                scan.add(rec)
    if counter is not None and pending:
        with counter.get_lock():
            counter.value += pending
    steps_stats = {s.name: stats[s.name].as_dict(getattr(s, "counters", None)) for s, _ in chain}
    if bad:
        steps_stats = {"read": read_stats.as_dict(None), **steps_stats}
    result = {"phase": phase.index, "file": file_index, "input_docs": n_in, "output_docs": n_out,
              "seconds": round(time.perf_counter() - t0, 4), "steps": steps_stats, "output_languages": out_languages}
    if scan is not None:
        _atomic_bytes(phase.directory / f"{name}.scan.pkl", pickle.dumps(scan.result(), protocol=5))
    _atomic_bytes(phase.directory / f"{name}.stats.json", json.dumps(result).encode())
    os.replace(tmp_out, out_path)
    _atomic_bytes(phase.directory / f"{name}.done", b"")
    return result


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _worker_run(args: tuple[int, int, Any]) -> dict[str, Any]:
    phase_index, file_index, state = args
    phases: list[Phase] = _STATE["phases"]
    prev = phases[phase_index - 1].directory if phase_index > 0 else None
    return run_file(phases[phase_index], file_index, state, prev)


def _fingerprint(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


@dataclass
class Pipeline:
    """Inputs + ordered steps → curated JSONL in ``work_dir/output``; see the module docstring."""

    inputs: Sequence[InputSpec]
    steps: Sequence[Step | GlobalStep]
    work_dir: Path
    workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    samples_per_reason: int = 5
    compresslevel: int = 3
    config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        names = [s.name for s in self.steps]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise CurateError(f"step names must be unique; repeated: {', '.join(sorted(dupes))} (set name = ...)")

    def _check_work_dir(self, overwrite: bool) -> None:
        marker = self.work_dir / "config.json"
        fingerprint = _fingerprint(self.config or {"inputs": [vars(i) for i in self.inputs],
                                                   "steps": [f"{s.kind}:{s.name}" for s in self.steps]})
        if marker.exists():
            if overwrite:
                shutil.rmtree(self.work_dir)
            elif json.loads(marker.read_text()).get("fingerprint") != fingerprint:
                raise CurateError(f"{self.work_dir} holds a run with a different configuration; "
                                  "use another work_dir or --overwrite")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        _atomic_bytes(marker, json.dumps({"fingerprint": fingerprint}).encode())

    def run(self, *, overwrite: bool = False, progress: Callable[[str, int, int, int], None] | None = None
            ) -> PipelineResult:
        """Run (or resume) every phase; ``progress(phase_label, files_done, files_total, docs_seen)`` is polled."""
        from herd.data.report import build_report

        t0 = time.perf_counter()
        self._check_work_dir(overwrite)
        tasks = expand_inputs(self.inputs)
        phases = split_phases(self.steps, self.work_dir)
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        counter = ctx.Value("q", 0)
        skipped = run = 0
        workers = max(1, min(self.workers, len(tasks)))
        initargs = (phases, tasks, counter, self.samples_per_reason, self.compresslevel)
        pool_cm = (ctx.Pool(workers, initializer=_init_worker, initargs=(*initargs, os.getpid())) if workers > 1
                   else nullcontext())
        with pool_cm as pool:
            for phase in phases:
                states: list[Any] = [None] * len(tasks)
                todo = [i for i in range(len(tasks)) if not (phase.directory / f"{_name(i)}.done").exists()]
                skipped += len(tasks) - len(todo)
                if todo and phase.global_step is not None:
                    prev = phases[phase.index - 1].directory
                    scans = [pickle.loads((prev / f"{_name(i)}.scan.pkl").read_bytes()) for i in range(len(tasks))]
                    states = phase.global_step.fit(scans)
                    del scans
                label = f"phase {phase.index}" + (f" ({phase.global_step.name})" if phase.global_step else "")
                done = len(tasks) - len(todo)
                if progress:
                    progress(label, done, len(tasks), counter.value)
                if workers == 1:
                    _init_worker(*initargs)
                    for i in todo:
                        _worker_run((phase.index, i, states[i]))
                        done += 1
                        if progress:
                            progress(label, done, len(tasks), counter.value)
                else:
                    pending = pool.imap_unordered(_worker_run, [(phase.index, i, states[i]) for i in todo])
                    while done < len(tasks):
                        try:
                            pending.next(timeout=0.2)
                            done += 1
                        except mp.TimeoutError:
                            pass
                        if progress:
                            progress(label, done, len(tasks), counter.value)
                run += len(todo)
        seconds = time.perf_counter() - t0
        report = build_report(self.work_dir, phases, len(tasks), seconds=seconds, workers=workers)
        out_files = [phases[-1].directory / f"{_name(i)}.jsonl.gz" for i in range(len(tasks))]
        return PipelineResult(self.work_dir, out_files, report, skipped, run, seconds)


def read_output(paths: Sequence[Path]) -> Iterator[Record]:
    """Every record of the pipeline's output files, in order."""
    for p in paths:
        yield from _read_jsonl_gz(Path(p))
