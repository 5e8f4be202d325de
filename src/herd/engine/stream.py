"""Streaming over the engine: one background thread steps it; callers read text deltas.

``EngineLoop(engine).submit(prompt_ids, params)`` returns a ``RequestStream``: iterate it
(``for delta in stream``) or async-iterate it (``async for delta in stream``) for the
text deltas as they are generated; ``stream.completion`` is set once it ends, and
``stream.cancel()`` stops it (its KV blocks are freed at the next step). Requests may be
submitted from any thread or event loop at any time: they join the running batch at the
next step (continuous batching). Only the loop's thread touches the engine.

Deltas are the ``SequenceState.take_delta`` ones: never half a UTF-8 character, never
text a stop string later removes, so their concatenation is ``completion.text``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence

from herd.engine.engine import Engine, RequestOutput
from herd.generation.sampling import Completion, SamplingParams


class RequestStream:
    """The outputs of one request, as text deltas; see the module docstring."""

    def __init__(self, loop: EngineLoop, request_id: str) -> None:
        self.request_id = request_id
        self.completion: Completion | None = None
        self.token_ids: list[int] = []
        self._loop = loop
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._aio: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None

    def _put(self, out: RequestOutput | BaseException) -> None:
        with self._lock:
            if self._aio is None:
                self._queue.put(out)
            else:
                event_loop, aqueue = self._aio
                event_loop.call_soon_threadsafe(aqueue.put_nowait, out)

    def _handle(self, item: RequestOutput | BaseException) -> str:
        if isinstance(item, BaseException):
            raise item
        self.token_ids.extend(item.new_token_ids)
        if item.finished:
            self.completion = item.completion
        return item.delta

    def __iter__(self) -> Iterator[str]:
        while self.completion is None:
            delta = self._handle(self._queue.get())
            if delta:
                yield delta

    async def __aiter__(self) -> AsyncIterator[str]:
        aqueue: asyncio.Queue = asyncio.Queue()
        with self._lock:  # from now on the engine thread hands outputs to this event loop
            while not self._queue.empty():
                aqueue.put_nowait(self._queue.get_nowait())
            self._aio = (asyncio.get_running_loop(), aqueue)
        while self.completion is None:
            delta = self._handle(await aqueue.get())
            if delta:
                yield delta

    def cancel(self) -> None:
        self._loop.cancel(self.request_id)

    def result(self) -> Completion:
        """Wait for the end (discarding deltas not read yet) and return the completion."""
        for _ in self:
            pass
        assert self.completion is not None
        return self.completion


class EngineLoop:
    """Runs ``engine.step()`` on a daemon thread while any request is unfinished."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._streams: dict[str, RequestStream] = {}
        self._inbox: list[tuple[str, object]] = []
        self._wake = threading.Condition()
        self._closed = False
        # callers waiting for the lock: the loop lets them in between steps (a lock is not
        # fair, and a loop that re-takes it at once would keep new requests out until the
        # running ones finish)
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="herd-engine", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """The loop's lock, taken between two steps."""
        with self._waiting_lock:
            self._waiting += 1
        try:
            with self._wake:
                yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> RequestStream:
        """Queue a request; validation errors (empty prompt, too long...) raise here."""
        with self._turn():
            if self._closed:
                raise RuntimeError("the engine loop is closed")
            request_id = self.engine.add_request(prompt_ids, params)  # the loop thread waits on _wake
            stream = RequestStream(self, request_id)
            self._streams[request_id] = stream
            self._wake.notify()
        return stream

    def cancel(self, request_id: str) -> None:
        with self._turn():
            self._inbox.append(("cancel", request_id))
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            while self._waiting:  # a submit or cancel is waiting: let it in before the next step
                time.sleep(0.0002)
            with self._wake:
                while not self._closed and not self._inbox and not self.engine.has_unfinished():
                    self._wake.wait()
                if self._closed:
                    for rid in list(self._streams):
                        self._deliver(self.engine.abort(rid), rid)
                    return
                inbox, self._inbox = self._inbox, []
                for _, rid in inbox:
                    self._deliver(self.engine.abort(rid), rid)
                try:
                    outputs = self.engine.step()
                except BaseException as exc:  # hand the failure to every waiting caller
                    for rid, stream in list(self._streams.items()):
                        self.engine.abort(rid)
                        stream._put(exc)
                    self._streams.clear()
                    continue
                for out in outputs:
                    self._deliver(out, out.request_id)

    def _deliver(self, out: RequestOutput | None, request_id: str) -> None:
        stream = self._streams.get(request_id)
        if out is None or stream is None:
            return
        if out.finished:
            del self._streams[request_id]
        stream._put(out)
