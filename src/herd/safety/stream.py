"""Shields on the streaming path: stop generation as soon as the output so far is blocked.

``guarded_stream`` wraps ``Generator.stream``: every new text delta is checked (with the text
before it) by the shield *before* it is handed out; when the verdict is "block", the delta is
withheld and the stream is closed, which ends the generator's decode loop, so no further token
is computed. Code Shield scans unclosed fences too, so insecure code is caught while it is
being written, not after the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from herd.safety.shield import Shield, Verdict


class GuardedStream:
    """Iterates over the allowed text deltas; afterwards ``verdict`` holds the last verdict and
    ``stopped`` tells whether the shield cut the generation short."""

    def __init__(self, stream: Any, shield: Shield, role: str = "assistant", min_chars: int = 1) -> None:
        # A shield with ``stream()`` gives a checker for one growing text (Code Shield's scans only new code).
        shield = shield.stream() if hasattr(shield, "stream") else shield
        self._stream, self.shield, self.role, self.min_chars = stream, shield, role, min_chars
        self.text = ""
        self.verdict: Verdict = Verdict()
        self.stopped = False

    def __iter__(self) -> Iterator[str]:
        pending = ""
        it = iter(self._stream)
        try:
            for delta in it:
                pending += delta
                if len(pending) < self.min_chars:
                    continue
                verdict = self.shield.check(self.text + pending, self.role)
                if verdict.blocked:
                    self.verdict, self.stopped = verdict, True
                    return
                self.verdict = verdict
                self.text += pending
                yield pending
                pending = ""
            if pending:
                verdict = self.shield.check(self.text + pending, self.role)
                self.verdict = verdict
                if verdict.blocked:
                    self.stopped = True
                    return
                self.text += pending
                yield pending
        finally:
            for gen in (it, getattr(self._stream, "_steps", None)):  # TextStream keeps Generator._run in _steps
                close = getattr(gen, "close", None)
                if close is not None:
                    close()  # the decode loop ends here: no further token is computed


def guarded_stream(generator: Any, prompt_ids: Sequence[int], shield: Shield, params: Any = None,
                   min_chars: int = 1) -> GuardedStream:
    """``generator.stream(prompt_ids, params)`` with ``shield`` checking each delta before it is yielded."""
    return GuardedStream(generator.stream(prompt_ids, params), shield, "assistant", min_chars)
