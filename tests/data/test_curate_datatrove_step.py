from __future__ import annotations

import json

import pytest

from herd.data.datatrove_step import as_datatrove_filter
from herd.data.dedup import ExactDedup
from herd.data.heuristics import GopherQuality
from herd.data.pii import PiiRedactor
from herd.data.records import CurateError
from tests.data.curate_corpus import ENGLISH

pytest.importorskip("datatrove")


def test_herd_steps_run_under_datatrove_executor(tmp_path):
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.base import PipelineStep

    class Collect(PipelineStep):  # writes what reaches the end of the pipeline
        def run(self, data, rank=0, world_size=1):
            with open(tmp_path / "out.jsonl", "w") as f:
                for doc in data:
                    f.write(json.dumps({"id": doc.id, "text": doc.text, "metadata": doc.metadata}) + "\n")
                    yield doc

    docs = [Document(text=ENGLISH * 2 + " Mail me: a.b@example.com", id="good"),
            Document(text="Too short.", id="short")]
    pipeline = [docs, as_datatrove_filter(GopherQuality()), as_datatrove_filter(PiiRedactor()),
                Collect()]
    LocalPipelineExecutor(pipeline=pipeline, tasks=1, logging_dir=str(tmp_path / "logs")).run()
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").open()]
    assert [d["id"] for d in out] == ["good"]
    assert "<EMAIL>" in out[0]["text"] and out[0]["metadata"]["pii"] == {"email": 1}
    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    assert any("gopher_short_doc" in json.dumps(s) for s in stats)


def test_global_steps_are_refused():
    with pytest.raises(CurateError, match="not a per-document"):
        as_datatrove_filter(ExactDedup())
