"""Scale-out: the same ``herd curate`` config run as datatrove pipelines on its local, Slurm or Ray executors.

herd's own runner (pipeline.py) is one machine: the MinHash index and the exact-dedup hashes
live in its main process. When a corpus outgrows that, :func:`build_datatrove_pipelines` turns
the config into datatrove stages and :func:`run_on_datatrove` runs them, each stage depending
on the one before (datatrove's ``depends=``; its per-task completion markers make a rerun skip
finished tasks):

* ``phase-0``: herd's readers (:class:`~herd.data.datatrove_steps.HerdInputReader`, so herd's
  WARC/HTML extraction and ids are kept) → every per-document step before the first global
  step, each wrapped with :func:`~herd.data.datatrove_step.as_datatrove_filter` (same rules,
  thresholds and drop reasons) → this phase's JSONL.gz → the next global step's signatures;
* ``exact_dedup`` → datatrove's ``ExactDedupSignature`` / ``ExactFindDedups`` / ``ExactDedupFilter``
  on herd's normalised text; the input order is the priority, so the kept copy is herd's;
* ``minhash_dedup`` → ``MinhashDedupSignature`` (herd's shingles) / ``MinhashDedupBuckets`` /
  herd's candidate verification / ``MinhashDedupCluster`` / ``MinhashDedupFilter`` with a
  ``MinhashConfig`` of herd's ``ngram``, ``bands`` x ``rows`` and ``seed``;
* ``phase-k`` reads the previous phase's files, applies the global decision and the next
  per-document steps; the last phase writes ``<work_dir>/datatrove/output/NNNNN.jsonl.gz``
  (one file per task, herd's record format).

What does not carry over. MinHash: datatrove's permutations are its own (64-bit hashes mod
2^61 - 1), so estimates differ from herd's runner by MinHash noise; its clustering is
transitive (A~B and B~C remove two of A, B, C even when A and C are far apart) and keeps an
arbitrary member of a cluster, where herd's runner greedily keeps the earliest document and
checks later ones against kept documents only. herd's verification (estimate >= threshold) is
kept as its own stage, applied to the pairs datatrove emits (consecutive members of a band's
bucket, a chain rather than every pair: a rejected middle pair can leave two duplicates unlinked
in that band; with 32 bands another band links them almost always) — ``verify_minhash = false``
drops it: then every LSH candidate pair is a
duplicate, and with 32 x 4 bands a pair of true Jaccard 0.5 is a candidate with probability
0.87 — see :func:`candidate_probability` — so precision falls sharply). Steps without a
datatrove stage (``line_dedup``, ``latest_url``, ``token_kl``, ``semdedup``) are refused with
an error naming the step rather than skipped. herd's ``report.json`` is not written: each
stage's datatrove stats (``logging_dir/<stage>/stats.json``) count herd's drop reasons and
step counters. Exact dedup adds datatrove's ``meta.duplicate_count`` to the copies it keeps.
Checked end to end on ``benchmarks/curate.py``'s 200 MB corpus (225,406 documents; URL filter,
Gopher, exact, MinHash, PII; local executor, 16 tasks, 2 workers): the same 19,291 documents kept
as herd's runner, in 4.9 min against its 3.0 min on the same loaded 2 cores; verification
rejected all 30,494 LSH candidate pairs there (copies with 12 % of their words replaced, true
Jaccard well under 0.7), pairs that datatrove's stages alone would have clustered and removed.
On Slurm or Ray, the inputs, ``work_dir`` and logging directory must be paths every node sees
(a shared filesystem); the herd package must be importable there (``slurm = { venv_path = ... }``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.data.readers import expand_inputs
from herd.data.records import CurateError, GlobalStep, Step

EXECUTORS = ("local", "slurm", "ray")
UNSUPPORTED = {
    "line_dedup": "datatrove has no CCNet line-count stage (its sentence dedup removes repeated 3-sentence spans, "
                  "a different rule)",
    "latest_url": "datatrove has no keep-the-newest-URL stage",
    "token_kl": "it needs the whole corpus's token distribution, which no datatrove stage computes",
    "semdedup": "datatrove has no embedding-cluster dedup stage",
}
_OPTION_KEYS = {"executor", "tasks", "workers", "logging_dir", "exact_finder_tasks", "minhash_workers_per_bucket",
                "verify_minhash", "slurm", "ray"}


@dataclass
class ScaleOutOptions:
    """``[scale_out]`` of a curate config (CLI flags override): executor, parallelism, cluster options.

    ``tasks``: tasks of the per-document phases (default: one per input file); ``workers``: how many run at
    once (local executor; default: all); ``slurm`` / ``ray``: keyword arguments of datatrove's
    ``SlurmPipelineExecutor`` (``partition`` and ``time`` required) / ``RayPipelineExecutor``.
    """

    executor: str = "local"
    tasks: int | None = None
    workers: int = -1
    logging_dir: str | None = None
    exact_finder_tasks: int = 1
    minhash_workers_per_bucket: int = 1
    verify_minhash: bool = True
    slurm: dict[str, Any] = field(default_factory=dict)
    ray: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise CurateError(f"scale_out.executor: unknown executor {self.executor!r}; "
                              f"choose one of {', '.join(EXECUTORS)} (or herd's own runner: herd curate run)")
        for name in ("tasks", "exact_finder_tasks", "minhash_workers_per_bucket"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise CurateError(f"scale_out.{name} must be an integer >= 1, got {value!r}")
        if self.executor == "slurm":
            missing = [k for k in ("partition", "time") if k not in self.slurm]
            if missing:
                raise CurateError(f"scale_out.slurm needs {' and '.join(missing)} (e.g. partition = \"cpu\", "
                                  "time = \"12:00:00\")")

    @classmethod
    def from_config(cls, raw: dict[str, Any] | None, **overrides: Any) -> ScaleOutOptions:
        table = dict((raw or {}).get("scale_out", {}))
        unknown = sorted(set(table) - _OPTION_KEYS)
        if unknown:
            raise CurateError(f"[scale_out]: unknown key(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(_OPTION_KEYS))}")
        table.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**table)


@dataclass
class Stage:
    """One datatrove pipeline: its steps, task count and a name (its logging sub-folder)."""

    name: str
    pipeline: list[Any]
    tasks: int


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that LSH with ``bands`` x ``rows`` makes a pair of this Jaccard a candidate: 1 - (1 - J^r)^b."""
    return 1.0 - (1.0 - jaccard ** rows) ** bands


def _load(config: Any) -> Any:
    from herd.data.config import load_config
    from herd.data.pipeline import Pipeline

    return config if isinstance(config, Pipeline) else load_config(config)


def build_datatrove_pipelines(config: Any, options: ScaleOutOptions | None = None) -> list[Stage]:
    """A curate config (path or loaded :class:`~herd.data.pipeline.Pipeline`) as datatrove stages, in run order."""
    from datatrove.pipeline.dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.utils.hashing import HashConfig

    from herd.data import datatrove_steps as ds
    from herd.data.dedup import ExactDedup, MinHashDedup

    pipeline = _load(config)
    options = options or ScaleOutOptions.from_config(pipeline.config)
    for i, s in enumerate(pipeline.steps):
        if isinstance(s, GlobalStep) and not isinstance(s, ExactDedup | MinHashDedup):
            why = UNSUPPORTED.get(s.kind, "no datatrove stage does it")
            raise CurateError(f"step {i} ({s.kind}, name {s.name!r}) cannot run on datatrove's executors: {why}; "
                              "run this config with herd's own runner (herd curate run) or remove the step")
    root = Path(pipeline.work_dir) / "datatrove"
    tasks = options.tasks or len(expand_inputs(pipeline.inputs))

    groups: list[tuple[GlobalStep | None, list[Step]]] = [(None, [])]
    for s in pipeline.steps:
        if isinstance(s, GlobalStep):
            groups.append((s, []))
        else:
            groups[-1][1].append(s)

    stages: list[Stage] = []
    pending: list[Any] = []  # the filter step of the global decision that the next phase applies first
    for k, (_, chain) in enumerate(groups):
        last = k == len(groups) - 1
        reader = ds.HerdInputReader(pipeline.inputs) if k == 0 else ds.HerdPhaseReader(str(root / f"phase-{k - 1}"))
        steps: list[Any] = [reader, *pending, *(ds.HerdStepFilter(s) for s in chain)]
        out_dir = root / ("output" if last else f"phase-{k}")
        steps.append(ds.HerdJsonlWriter(str(out_dir), final=last, compresslevel=pipeline.compresslevel))
        phase_name = f"phase-{k}"
        after: list[Stage] = []
        if not last:
            nxt = groups[k + 1][0]
            g = root / f"{k + 1:02d}-{nxt.name}"
            if isinstance(nxt, ExactDedup):
                cfg = ExactDedupConfig(content_getter=ds.ExactContent(nxt.languages),
                                       document_priority=ds.input_order_priority, hash_config=HashConfig(64))
                steps.append(ExactDedupSignature(str(g / "sigs"), cfg, finder_workers=options.exact_finder_tasks))
                find = ExactFindDedups(str(g / "sigs"), str(g / "dups"), cfg)
                after.append(Stage(f"{k + 1:02d}-{nxt.name}-find", [find], options.exact_finder_tasks))
                pending = [ExactDedupFilter(str(g / "dups"), cfg)]
            else:
                assert isinstance(nxt, MinHashDedup)
                mh = MinhashConfig(n_grams=nxt.ngram, num_buckets=nxt.bands, hashes_per_bucket=nxt.rows, seed=nxt.seed,
                                   hash_config=HashConfig(64))
                if nxt.languages is not None:
                    steps.append(ds.BlankIneligible(nxt.languages))
                steps.append(ds.HerdMinhashSignature(str(g / "sigs"), mh, verify=options.verify_minhash))
                buckets = nxt.bands * options.minhash_workers_per_bucket
                after.append(Stage(f"{k + 1:02d}-{nxt.name}-buckets",
                                   [MinhashDedupBuckets(str(g / "sigs"), str(g / "pairs"), config=mh)], buckets))
                pairs = g / "pairs"
                if options.verify_minhash:
                    after.append(Stage(f"{k + 1:02d}-{nxt.name}-verify",
                                       [ds.HerdMinhashVerify(str(g / "sigs"), str(g / "pairs"), str(g / "verified"),
                                                             mh, nxt.threshold)], nxt.bands))
                    pairs = g / "verified"
                after.append(Stage(f"{k + 1:02d}-{nxt.name}-cluster",
                                   [MinhashDedupCluster(str(pairs), str(g / "remove"), config=mh)], 1))
                pending = [MinhashDedupFilter(str(g / "remove"))]
        stages.append(Stage(phase_name, steps, tasks))
        stages.extend(after)
    return stages


def make_executors(stages: list[Stage], options: ScaleOutOptions, logging_dir: str | Path) -> list[Any]:
    """One datatrove executor per stage, each ``depends=`` on the one before; running the last runs them all."""
    common_kw: dict[str, Any]
    if options.executor == "local":
        from datatrove.executor import LocalPipelineExecutor as Executor

        common_kw = {"workers": options.workers}
    elif options.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor as Executor

        common_kw = {"workers": options.workers, **options.slurm}
    elif options.executor == "ray":
        try:
            from datatrove.executor.ray import RayPipelineExecutor as Executor
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise CurateError(f"executor ray: {e}; pip install ray") from None
        common_kw = {"workers": options.workers, **options.ray}
    else:
        raise CurateError(f"unknown executor {options.executor!r}; choose one of {', '.join(EXECUTORS)}")
    executors: list[Any] = []
    for stage in stages:
        kw = dict(common_kw)
        if options.executor == "slurm":
            kw.setdefault("job_name", "herd-curate")
            kw["job_name"] = f"{kw['job_name']}-{stage.name}"
        try:
            executors.append(Executor(pipeline=stage.pipeline, tasks=stage.tasks,
                                      logging_dir=str(Path(logging_dir) / stage.name),
                                      depends=executors[-1] if executors else None, **kw))
        except TypeError as e:
            raise CurateError(f"scale_out.{options.executor}: {e}") from None
    return executors


@dataclass
class ScaleOutResult:
    output_dir: Path
    logging_dir: Path
    stages: list[str]


def _pin_config(root: Path, pipeline: Any, options: ScaleOutOptions, overwrite: bool) -> None:
    """``root/config.json`` ties the directory to one config: datatrove's completion markers would otherwise make
    a rerun with other steps or thresholds skip every task and leave the old output in place."""
    import json
    import shutil

    raw = {k: v for k, v in (pipeline.config or {}).items() if k != "scale_out"}
    fingerprint = json.dumps({"config": raw or {"steps": [f"{s.kind}:{s.name}" for s in pipeline.steps]},
                              "tasks": options.tasks, "verify_minhash": options.verify_minhash,
                              "exact_finder_tasks": options.exact_finder_tasks,
                              "minhash_workers_per_bucket": options.minhash_workers_per_bucket},
                             sort_keys=True, default=str)
    marker = root / "config.json"
    if marker.exists():
        if overwrite:
            shutil.rmtree(root)
        elif json.loads(marker.read_text()).get("fingerprint") != fingerprint:
            raise CurateError(f"{root} holds a run with a different configuration; use another work_dir or "
                              "--overwrite")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".config.json.tmp"
    tmp.write_text(json.dumps({"fingerprint": fingerprint}))
    tmp.replace(marker)


def run_on_datatrove(config: Any, options: ScaleOutOptions | None = None, *, overwrite: bool = False
                     ) -> ScaleOutResult:
    """Build the stages and run them (the local executor runs here; Slurm submits jobs; Ray runs on the cluster).

    A rerun on the same ``work_dir`` resumes (datatrove skips completed tasks); another config there is refused
    unless ``overwrite`` (which deletes ``work_dir/datatrove`` first).
    """
    pipeline = _load(config)
    options = options or ScaleOutOptions.from_config(pipeline.config)
    stages = build_datatrove_pipelines(pipeline, options)
    root = Path(pipeline.work_dir) / "datatrove"
    _pin_config(root, pipeline, options, overwrite)
    logging_dir = Path(options.logging_dir) if options.logging_dir else root / "logs"
    executors = make_executors(stages, options, logging_dir)
    executors[-1].run()
    return ScaleOutResult(root / "output", logging_dir, [s.name for s in stages])
