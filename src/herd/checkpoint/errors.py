"""The one exception type of ``herd.checkpoint``."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory or file that herd cannot read or write as asked.

    The message names the culprit: the file, the config field or the tensor(s).
    """
