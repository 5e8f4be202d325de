"""Continuous batching: which requests compute which tokens in the next forward pass.

Every request is in one of two queues. ``running`` requests hold KV blocks; ``waiting``
ones (new, or preempted) hold none. A request has a token list (prompt + what it has
generated) and ``num_computed``, how many of those tokens already have keys and values
in the cache. One rule covers prefill and decode (vLLM v1's): each step a request
computes some of its not-yet-computed tokens; when it has computed them all, the last
one's logits give its next token. A decode is the case of one token left; a long prompt
is split into chunks over several steps (chunked prefill), in the same forward passes
as other requests' decodes.

Each step has a token budget (``max_batched_tokens``) and a cap on requests
(``max_seqs``). Running requests go first, oldest first. A running request that needs a
new block when none is free makes room by preempting the newest running request (its
blocks are freed and it goes back to the front of the waiting queue, to be recomputed
later, its generated tokens kept): the cache can be full, but a step never fails for
lack of memory. Waiting requests are admitted oldest first while the budget and the
free blocks allow, keeping one block of headroom per running request, so new arrivals
do not immediately force preemptions. A request's full prompt blocks that are already in
the prefix cache are taken over instead of computed.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from herd.engine.block_manager import BlockManager, block_hashes
from herd.generation.sampling import SequenceState

_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """One request inside the engine."""

    request_id: str
    sequence: SequenceState
    arrival: int = field(default_factory=lambda: next(_ids))
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0
    hashes: list[int] = field(default_factory=list)  # chain hashes of its full, computed blocks
    preemptions: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache at the last admission

    @property
    def tokens(self) -> list[int]:
        return self.sequence.prompt_ids + self.sequence.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.sequence.prompt_ids) + len(self.sequence.output_ids)


@dataclass
class Scheduled:
    """A request's share of the next step: compute ``n`` tokens from ``request.num_computed``."""

    request: Request
    n: int

    @property
    def samples(self) -> bool:
        """Whether this step reaches the request's last token (its logits are sampled)."""
        return self.request.num_computed + self.n == self.request.num_tokens

    @property
    def is_decode(self) -> bool:
        r = self.request
        return self.n == 1 and self.samples and len(r.sequence.output_ids) > 0


class Scheduler:
    """Decides each step's batch; owns the block tables (see the module docstring)."""

    def __init__(self, blocks: BlockManager, *, max_batched_tokens: int = 256, max_seqs: int = 64) -> None:
        if max_batched_tokens < 1 or max_seqs < 1:
            raise ValueError(f"max_batched_tokens and max_seqs must be >= 1, got {max_batched_tokens}, {max_seqs}")
        self.blocks = blocks
        self.max_batched_tokens, self.max_seqs = max_batched_tokens, max_seqs
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, request: Request) -> None:
        """Take a finished or cancelled request out and give its blocks back."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._release(request)

    # ------------------------------------------------------------------ scheduling

    def schedule(self) -> list[Scheduled]:
        budget = self.max_batched_tokens
        out: list[Scheduled] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            r = self.running[i]
            n = min(r.num_tokens - r.num_computed, budget)
            if not self._grow(r, r.num_computed + n):
                preempted = True
                if r not in self.running:  # it had to preempt itself
                    break
                continue
            out.append(Scheduled(r, n))
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs and not preempted:
            r = self.waiting[0]
            if not r.block_table:
                self._match_prefix(r)
            n = min(r.num_tokens - r.num_computed, budget)
            need = self.blocks.blocks_for(r.num_computed + n) - len(r.block_table)
            if need > self.blocks.num_free - len(self.running):
                self._release(r)  # waiting requests pin no blocks (they could starve the running ones)
                break
            r.block_table.extend(self.blocks.allocate(need))
            self.waiting.popleft()
            self.running.append(r)
            out.append(Scheduled(r, n))
            budget -= n
        return out

    def _grow(self, r: Request, num_tokens: int) -> bool:
        """Give ``r`` the blocks for ``num_tokens`` tokens, preempting the newest running
        requests while none are free. False when something was preempted instead."""
        need = self.blocks.blocks_for(num_tokens) - len(r.block_table)
        if need <= self.blocks.num_free:
            r.block_table.extend(self.blocks.allocate(max(need, 0)))
            return True
        self._preempt(self.running[-1])
        return False

    def _preempt(self, r: Request) -> None:
        self.running.remove(r)
        self._release(r)
        r.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(r)

    def _release(self, r: Request) -> None:
        self.blocks.free(r.block_table)
        r.block_table, r.num_computed, r.hashes = [], 0, []

    def _match_prefix(self, r: Request) -> None:
        """Take over the cached blocks of r's leading full blocks, leaving at least its
        last token to compute (its logits are needed)."""
        hashes = block_hashes(r.tokens[:-1], self.blocks.block_size)
        matched = self.blocks.match_prefix(hashes)
        r.block_table = list(matched)
        r.hashes = hashes[: len(matched)]
        r.num_computed = len(matched) * self.blocks.block_size
        r.cached_tokens = r.num_computed

    # ------------------------------------------------------------------ after the step

    def computed(self, item: Scheduled) -> None:
        """Record that the step computed ``item``'s tokens; register its newly full blocks."""
        r = item.request
        r.num_computed += item.n
        if not self.blocks.prefix_caching:
            return
        bs = self.blocks.block_size
        full = r.num_computed // bs
        if len(r.hashes) < full:
            tokens = r.tokens
            parent = r.hashes[-1] if r.hashes else 0
            for b in range(len(r.hashes), full):
                parent = hash((parent, tuple(tokens[b * bs:(b + 1) * bs])))
                r.hashes.append(parent)
                self.blocks.register(r.block_table[b], parent)
