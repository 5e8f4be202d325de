"""herd's pieces as datatrove ``PipelineStep``s: what :mod:`herd.data.scale_out` assembles into pipelines.

This module imports datatrove at the top (the ``curate`` extra); everything in it is defined at
module level so datatrove's executors can pickle it (``multiprocess`` for the local executor,
``dill`` for Slurm's ``executor.pik``, Ray's serializer) and rebuild it on another machine.

* :class:`HerdInputReader` reads the config's ``[[input]]`` tables with herd's own readers
  (JSONL/Parquet/text/WARC with herd's HTML extraction), one input file per rank in turn, so
  ids and ``meta`` are exactly what herd's runner sees.
* :class:`HerdStepFilter` runs one per-document herd step (same rules, thresholds, drop reasons;
  the step's counters such as PII found become datatrove stats).
* :class:`HerdPhaseReader` reads back what the previous phase's writer wrote for this rank, so the
  dedup stages' per-rank document indices line up between the signature and the filter stage.
* :class:`HerdMinhashSignature` is datatrove's MinHash stage 1 with herd's shingles (word n-grams of
  herd's hash normalisation, the unit herd's Jaccard is measured in) and a full-signature file per
  rank that :class:`HerdMinhashVerify` uses to keep only the LSH candidate pairs whose MinHash
  estimate reaches herd's threshold, as herd's own runner does, before datatrove clusters them.
"""

from __future__ import annotations

import gzip
import json
import struct
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.binaryio import read_tuples_from_file

from herd.data.dedup import shingles as herd_shingles
from herd.data.readers import InputSpec, expand_inputs, read_task
from herd.data.records import CurateError, GlobalStep, Step

INPUT_FILE_KEY = "_herd_input_file"  # meta key: index of the input file (input order for "keep the earliest")
NOT_ELIGIBLE = "\x00herd: not eligible for this dedup step\x00"


def to_document(rec: dict[str, Any]) -> Document:
    return Document(text=rec["text"], id=rec["id"], metadata=rec["meta"])


class HerdJsonlWriter(PipelineStep):
    """Write this rank's documents as herd records to ``{rank:05d}.jsonl.gz`` (a temp name, renamed when complete).

    The file is written even when empty, so a phase's files are one per rank; ``final`` drops the
    scale-out bookkeeping key from ``meta`` (the curated output matches herd's runner's records).
    """

    type = "💽 - WRITER"
    name = "herd jsonl.gz"

    def __init__(self, folder: DataFolderLike, final: bool = False, compresslevel: int = 3) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)
        self.final, self.compresslevel = final, compresslevel

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl.gz"
        tmp = f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        with self.folder.open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                               compresslevel=self.compresslevel) as out:
            for doc in data:
                meta = doc.metadata
                if self.final:
                    meta = {k: v for k, v in meta.items() if k != INPUT_FILE_KEY}
                rec = {"id": doc.id, "text": doc.text, "meta": meta}
                out.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
                self.stat_update("written")
                yield doc
        self.folder.mv(tmp, name)


class HerdInputReader(PipelineStep):
    """The config's inputs read by herd's readers; rank ``r`` of ``n`` reads input files ``r, r + n, ...``."""

    type = "📖 - READER"
    name = "herd inputs"

    def __init__(self, inputs: Sequence[InputSpec]) -> None:
        super().__init__()
        self.inputs = list(inputs)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        tasks = expand_inputs(self.inputs)
        for index in range(rank, len(tasks), world_size):
            for rec in read_task(tasks[index]):
                self.stat_update("documents")
                if "bad_record" in rec["meta"]:
                    self.stat_update("bad_record")
                    continue
                rec["meta"][INPUT_FILE_KEY] = index
                yield to_document(rec)


class HerdPhaseReader(PipelineStep):
    """This rank's file of a previous phase (``{rank:05d}.jsonl.gz``; absent when that rank kept nothing)."""

    type = "📖 - READER"
    name = "herd phase reader"

    def __init__(self, folder: DataFolderLike) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        name = f"{rank:05d}.jsonl.gz"
        if not self.folder.exists(name):
            return
        with self.folder.open(name, "rt", compression="gzip") as f:
            for line in f:
                self.stat_update("documents")
                yield to_document(json.loads(line))


class HerdStepFilter(BaseFilter):
    """A per-document herd step as a datatrove filter: a drop is ``(False, herd's reason)``."""

    name = "herd step"

    def __init__(self, step: Step, exclusion_writer: Any = None) -> None:
        if isinstance(step, GlobalStep) or not isinstance(step, Step):
            raise CurateError(f"as_datatrove_filter: {step!r} is not a per-document herd step")
        self.name = f"herd {step.name}"  # before BaseFilter.__init__, which names the step's stats
        super().__init__(exclusion_writer)
        self.step = step

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        rec = {"id": doc.id, "text": doc.text, "meta": doc.metadata}
        self.step.counters = {}
        reason = self.step(rec)
        for key, n in self.step.counters.items():
            self.stat_update(key, value=n)
        doc.text = rec["text"]
        doc.metadata = rec["meta"]
        return True if reason is None else (False, reason)


def _language(doc: Document) -> str:
    return doc.metadata.get("language") or "unknown"


class ExactContent:
    """ExactDedupConfig.content_getter: herd's normalised text, or a unique string for documents the step skips."""

    def __init__(self, languages: frozenset[str] | None) -> None:
        self.languages = languages

    def __call__(self, doc: Document) -> str:
        from herd.data.textutil import normalize_for_hash

        if self.languages is not None and _language(doc) not in self.languages:
            return NOT_ELIGIBLE + uuid.uuid4().hex  # never equal to anything: the document is not deduplicated
        return normalize_for_hash(doc.text)


def input_order_priority(doc: Document) -> int:
    """ExactDedupConfig.document_priority: earlier input files win, so the earliest copy is kept as herd's runner does.

    datatrove keeps the highest priority (1..65535) and, among equals, the lowest index in its rank; one input
    file is read by one rank in order, so this reproduces herd's "earliest in input order" for up to 65,534
    input files (later files share priority 1 and then the rank order decides).
    """
    return max(1, 65535 - int(doc.metadata.get(INPUT_FILE_KEY, 65534)))


class BlankIneligible(PipelineStep):
    """Before a MinHash signature stage: hide documents outside the step's ``languages`` from it."""

    name = "herd dedup languages"

    def __init__(self, languages: frozenset[str]) -> None:
        super().__init__()
        self.languages = languages

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if _language(doc) not in self.languages:
                self.stat_update("not_eligible")
                doc = Document(text=NOT_ELIGIBLE, id=doc.id, metadata={})
            yield doc


class HerdMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash stage 1 over herd's shingles, also writing each document's whole signature.

    ``full/{rank:05d}.sig`` holds one row of ``num_buckets * hashes_per_bucket`` uint64 per document
    (in the rank's document order; zeros for documents without shingles) for :class:`HerdMinhashVerify`.
    """

    def __init__(self, output_folder: DataFolderLike, config: MinhashConfig, verify: bool = True) -> None:
        super().__init__(output_folder, config)
        self.verify = verify
        self._full: Any = None
        self._pending: np.ndarray | None = None

    def _flush(self) -> None:
        if self._pending is not None and self._full is not None:
            self._full.write(self._pending.astype("<u8").tobytes())
        self._pending = None

    def get_shingles(self, text: str) -> np.ndarray:
        self._flush()
        self._pending = np.zeros(self.num_hashes, dtype=np.uint64)
        if text == NOT_ELIGIBLE:
            return np.zeros((0, 1), dtype=np.uint64)
        values = [self._hash_func(s.decode("utf-8")) for s in herd_shingles(text, self.config.n_grams)]
        return np.asarray(values, dtype=np.uint64).reshape((-1, 1))

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        sig = super().get_signature(shingles)
        self._pending = np.asarray(sig, dtype=np.uint64).reshape(-1)
        return sig

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> None:
        self._full = self.output_folder.open(f"full/{rank:05d}.sig", mode="wb") if self.verify else None
        try:
            super().run(data, rank, world_size)
            self._flush()
        finally:
            if self._full is not None:
                self._full.close()
            self._full, self._pending = None, None


class HerdMinhashVerify(PipelineStep):
    """Between datatrove's MinHash stages 2 and 3: keep a candidate pair only if its MinHash estimate >= threshold.

    Rank ``b`` reads bucket ``b``'s ``.dups`` pairs ``(file, doc, file, doc)``, looks both documents' whole
    signatures up in the ``full/`` files of :class:`HerdMinhashSignature` and writes the verified pairs under
    the same name to ``output_folder``, where datatrove's clustering stage reads them.
    """

    type = "🫂 - DEDUP"
    name = "herd MinHash verification"

    def __init__(self, signatures_folder: DataFolderLike, pairs_folder: DataFolderLike,
                 output_folder: DataFolderLike, config: MinhashConfig, threshold: float) -> None:
        super().__init__()
        self.signatures = get_datafolder(signatures_folder)
        self.pairs = get_datafolder(pairs_folder)
        self.output_folder = get_datafolder(output_folder)
        self.config, self.threshold = config, threshold
        self.width = config.num_buckets * config.hashes_per_bucket

    def _signatures(self, file_id: int, cache: dict[int, np.ndarray]) -> np.ndarray:
        if file_id not in cache:
            name = f"full/{file_id:05d}.sig"
            if self.signatures.is_local():
                arr = np.memmap(self.signatures.resolve_paths(name), dtype="<u8", mode="r")
            else:
                with self.signatures.open(name, "rb") as f:
                    arr = np.frombuffer(f.read(), dtype="<u8")
            cache[file_id] = arr.reshape(-1, self.width)
        return cache[file_id]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> None:
        cache: dict[int, np.ndarray] = {}
        for name in self.pairs.list_files(glob_pattern="*.dups"):
            if int(name.split("_")[0]) % world_size != rank:
                continue
            with self.pairs.open(name, "rb") as src, self.output_folder.open(name, "wb") as out:
                for f1, d1, f2, d2 in read_tuples_from_file(src, "4I", lines_to_buffer=1024):
                    self.stat_update("candidate_pairs")
                    a, b = self._signatures(f1, cache)[d1], self._signatures(f2, cache)[d2]
                    if float(np.mean(a == b)) >= self.threshold:
                        out.write(struct.pack("<4I", f1, d1, f2, d2))
                        self.stat_update("verified_pairs")
                    else:
                        self.stat_update("rejected_pairs")
