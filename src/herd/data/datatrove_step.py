"""Run a herd per-document step inside a datatrove pipeline (its Slurm/Ray/local executors) for scale-out.

herd's own runner (pipeline.py) covers one machine. When a corpus outgrows it, datatrove's
executors shard the work over a cluster; :func:`as_datatrove_filter` wraps any herd
:class:`~herd.data.records.Step` as a datatrove ``BaseFilter`` so the same rules, thresholds
and drop reasons run there: the document's text and metadata are handed to the step as a
record, the step's rewrite and annotations are copied back, and a drop becomes datatrove's
``(False, reason)`` so its stats count herd's reasons. Global steps (dedup, keep-latest-URL)
are not wrapped: at that scale use datatrove's own disk-sorted MinHash and exact-dedup stages.
"""

from __future__ import annotations

from typing import Any

from herd.data.records import CurateError, GlobalStep, Step


def as_datatrove_filter(step: Step, exclusion_writer: Any = None) -> Any:
    """A datatrove ``BaseFilter`` running ``step`` (needs the ``datatrove`` package)."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    if isinstance(step, GlobalStep) or not isinstance(step, Step):
        raise CurateError(f"as_datatrove_filter: {step!r} is not a per-document herd step")

    class HerdStepFilter(BaseFilter):
        name = f"herd {step.name}"

        def __init__(self) -> None:
            super().__init__(exclusion_writer)
            self.step = step

        def filter(self, doc: Any) -> bool | tuple[bool, str]:
            rec = {"id": doc.id, "text": doc.text, "meta": doc.metadata}
            reason = self.step(rec)
            doc.text = rec["text"]
            doc.metadata = rec["meta"]
            return True if reason is None else (False, reason)

    return HerdStepFilter()
