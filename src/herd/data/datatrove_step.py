"""Run a herd per-document step inside a datatrove pipeline (its Slurm/Ray/local executors) for scale-out.

herd's own runner (pipeline.py) covers one machine. When a corpus outgrows it, datatrove's
executors shard the work over a cluster; :func:`as_datatrove_filter` wraps any herd
:class:`~herd.data.records.Step` as a datatrove ``BaseFilter`` so the same rules, thresholds
and drop reasons run there: the document's text and metadata are handed to the step as a
record, the step's rewrite and annotations are copied back, and a drop becomes datatrove's
``(False, reason)`` so its stats count herd's reasons. Global steps (dedup, keep-latest-URL)
are not wrapped: :mod:`herd.data.scale_out` maps them onto datatrove's disk-based exact and MinHash
stages and runs a whole curate config on datatrove's executors.
"""

from __future__ import annotations

from typing import Any

from herd.data.records import CurateError, GlobalStep, Step


def as_datatrove_filter(step: Step, exclusion_writer: Any = None) -> Any:
    """A datatrove ``BaseFilter`` running ``step`` (needs the ``datatrove`` package; picklable for its executors)."""
    if isinstance(step, GlobalStep) or not isinstance(step, Step):
        raise CurateError(f"as_datatrove_filter: {step!r} is not a per-document herd step")
    from herd.data.datatrove_steps import HerdStepFilter

    return HerdStepFilter(step, exclusion_writer)
