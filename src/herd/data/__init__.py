"""Data: curation (raw text → curated JSON Lines), token shards (the format training reads), tokenization.

Curation (``herd curate``) is a pipeline of steps over curation records (records.py):
readers.py (JSONL/Parquet/text/WARC) and extract.py (trafilatura), urls.py, langid.py
(lingua), heuristics.py (Gopher, C4, duplicated n-gram coverage), nsfw.py, tokenkl.py,
pii.py, dedup.py (exact, datasketch MinHash LSH, CCNet lines), semdedup.py (optional
SemDeDup on all-MiniLM-L6-v2 embeddings), decontam.py, quality.py (fastText + LLM
labelling), run by pipeline.py from a TOML config (config.py) with a report (report.py);
mix.py turns the curated output into weighted token-shard sources for herd.train, and
datatrove_step.py runs a herd step inside datatrove's executors.

Why herd's steps are not datatrove ``PipelineStep``s: datatrove is the *peer* herd's filters
are checked against (same corpus, decisions compared), which only means something if the
two are separate implementations; its steps carry a ``Document`` object model, per-step
stats and loguru logging that cost time on one machine, while herd's steps are plain
callables over dicts that a process pool streams. herd uses datatrove's ideas where they are
the right ones (resumable per-file tasks with completion markers, the Gopher/C4 rule set,
its URL word lists) and datasketch for MinHash/LSH rather than its own. A step is small
enough to wrap as a datatrove ``PipelineStep`` (call ``step.process`` on ``doc.text`` and
``doc.metadata``) when a corpus outgrows one machine and needs datatrove's Slurm or Ray
executors: datatrove_step.as_datatrove_filter does that, and scale_out.py runs a whole curate
config there (``herd curate run --executor local|slurm|ray``), the dedup steps mapped onto
datatrove's disk-based exact and MinHash stages (datatrove_steps.py).
"""

from herd.data.records import CurateError, GlobalStep, Record, Step
from herd.data.shards import (
    FORMAT_VERSION,
    Shard,
    ShardError,
    ShardInfo,
    ShardWriter,
    SidecarSpec,
    find_shards,
    open_shard,
    open_shards,
    token_dtype,
    write_shard,
)
from herd.data.tokenize import CorpusError, TokenizeSummary, tokenize_corpus

__all__ = [
    "FORMAT_VERSION",
    "CorpusError",
    "CurateError",
    "GlobalStep",
    "Record",
    "Step",
    "Shard",
    "ShardError",
    "ShardInfo",
    "ShardWriter",
    "SidecarSpec",
    "TokenizeSummary",
    "find_shards",
    "open_shard",
    "open_shards",
    "token_dtype",
    "tokenize_corpus",
    "write_shard",
]
