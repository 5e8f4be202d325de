"""The inference engine: continuous batching over a paged, prefix-cached KV cache.

``Engine`` is synchronous and single-threaded: ``add_request`` queues a request,
``step`` runs one forward pass over whatever the scheduler packs into it (prefill chunks
and decodes of any number of requests, in one row) and returns what each request got,
``abort`` cancels. ``generate`` runs a list of prompts to the end. ``herd.engine.stream``
drives an engine from a background thread for callers that stream (the server, the CLI).

Sampling, stop conditions, logprobs and logits processors are ``herd.generation.
sampling``'s (the same ``SamplingParams`` and ``SequenceState`` as the Generator), so a
request behaves the same here and there. The cache is sized from a memory budget
(``memory``: bytes for weights + KV) or a number of blocks; a request waits in the queue
until there is room, and the estimate behind the sizing is ``Engine.memory``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from herd.engine.block_manager import BlockManager
from herd.engine.memory import ServingMemory, estimate_serving_memory, model_weight_bytes
from herd.engine.paged_cache import PackedSeq, PagedKVCache
from herd.engine.scheduler import Request, Scheduled, Scheduler
from herd.generation.cpu_gemv import use_cpu_gemv
from herd.generation.sampling import (
    Completion,
    SamplingParams,
    SequenceState,
    TokenLogprob,
    default_stop_tokens,
    pick,
    text_decoder,
)
from herd.model.transformer import Transformer


@dataclass
class RequestOutput:
    """What one request got from one step: its new tokens (and logprobs), the new text
    safe to show, and, once it has finished, its ``completion``."""

    request_id: str
    new_token_ids: list[int]
    delta: str
    finished: bool
    completion: Completion | None = None
    new_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class StepRecord:
    """One forward pass: how many requests, and how many prefill and decode tokens."""

    num_seqs: int
    prefill_tokens: int
    decode_tokens: int


@dataclass
class EngineStats:
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def max_batch(self) -> int:
        return max((s.num_seqs for s in self.steps), default=0)

    @property
    def mixed_steps(self) -> int:
        """Steps whose forward pass held both prefill tokens and decode tokens."""
        return sum(1 for s in self.steps if s.prefill_tokens and s.decode_tokens)


class Engine:
    """Serves many requests at once from one ``Transformer`` (see the module docstring).

    Size the cache with ``num_blocks`` or with ``memory`` (bytes for weights + KV; the
    weights' bytes are measured on the loaded model). ``max_batched_tokens`` caps the
    tokens of one forward pass (the prefill chunk size), ``max_seqs`` the requests in it.
    ``kv_dtype="int8"`` keeps the KV cache in int8 (about half the bytes of bf16; see
    ``herd.engine.paged_cache``). ``batch_invariant`` (default: on a CPU) runs attention one
    query at a time, so that a request's tokens do not depend, even by a rounding, on how
    its prompt is chunked or which requests share its steps, at ~15 % of prefill speed (see
    ``herd.engine.paged_cache``).
    """

    def __init__(self, model: Transformer, tokenizer: Any = None, *, num_blocks: int | None = None,
                 memory: int | None = None, block_size: int = 16, max_batched_tokens: int = 256,
                 max_seqs: int = 64, prefix_caching: bool = True, cpu_gemv: bool = True,
                 kv_dtype: str | None = None, batch_invariant: bool | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.args = model.args
        weight = model.model.embed_tokens.weight  # the compute dtype (a quantized LM head holds int8)
        self.device, self.dtype = weight.device, weight.dtype
        self.memory: ServingMemory = estimate_serving_memory(
            self.args, self.dtype, budget=memory, block_size=block_size, weight_bytes=model_weight_bytes(model),
            kv_dtype=torch.int8 if kv_dtype == "int8" else None)
        if num_blocks is None:
            if memory is None:
                raise ValueError("Engine needs num_blocks or a memory budget (bytes for weights + KV cache)")
            num_blocks = self.memory.num_blocks
            if num_blocks < 1:
                raise ValueError(f"memory budget of {memory} bytes leaves no room for the KV cache: the weights "
                                 f"alone take {self.memory.weights} bytes\n{self.memory.summary()}")
        self.cache = PagedKVCache(self.args, num_blocks, block_size, dtype=self.dtype, device=self.device,
                                  kv_dtype=kv_dtype, batch_invariant=batch_invariant)
        self.blocks = BlockManager(num_blocks, block_size, prefix_caching=prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_batched_tokens=max_batched_tokens, max_seqs=max_seqs)
        self.stats = EngineStats()
        self.capacity = num_blocks * block_size  # tokens of KV the cache holds
        self._requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.gemv_layers = use_cpu_gemv(model) if cpu_gemv and self.device.type == "cpu" else 0

    # ------------------------------------------------------------------ requests

    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        """Queue a request (token ids); returns its id. It starts when there is room."""
        params = params or SamplingParams()
        request_id = str(next(self._ids)) if request_id is None else str(request_id)
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        prompt = list(prompt_ids)
        vocab = self.args.vocab_size
        if not prompt:
            raise ValueError(f"request {request_id!r}: the prompt is empty (it needs at least <|begin_of_text|>)")
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
            raise ValueError(f"request {request_id!r}: prompt holds token ids outside [0, vocab_size={vocab})")
        limit = min(self.args.max_seq_len, self.capacity)
        if len(prompt) + 1 > limit:
            what = "model's context" if limit == self.args.max_seq_len else "KV cache (all blocks together)"
            raise ValueError(f"request {request_id!r}: prompt has {len(prompt)} tokens but the {what} holds "
                             f"{limit} tokens: no room to generate")
        sequence = SequenceState(
            prompt, params,
            stop_token_ids=self._stop_tokens(params),
            decoder=text_decoder(self.tokenizer) if self.tokenizer is not None else None,
            max_new_tokens=min(params.max_new_tokens, limit - len(prompt)),
            eom_id=getattr(self.tokenizer, "eom_id", None),
        )
        request = Request(request_id, sequence)
        self._requests[request_id] = request
        self.scheduler.add(request)
        return request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Cancel a request: its blocks go back at once. Returns its final output (its
        completion has ``finish_reason == "cancelled"``), or None if it is unknown or done."""
        request = self._requests.pop(str(request_id), None)
        if request is None:
            return None
        self.scheduler.remove(request)
        s = request.sequence
        completion = Completion(token_ids=list(s.output_ids), text=s.text, finish_reason="cancelled",  # type: ignore[arg-type]
                                logprobs=None if s.logprobs is None else list(s.logprobs),
                                prompt_tokens=len(s.prompt_ids), stop_reason="out_of_tokens")
        return RequestOutput(request.request_id, [], "", True, completion)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def _stop_tokens(self, params: SamplingParams) -> tuple[int, ...]:
        return default_stop_tokens(params, self.tokenizer, self.args.eos_token_id)

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """One forward pass over the scheduled tokens; the outputs of requests that sampled."""
        batch = self.scheduler.schedule()
        if not batch:
            if self.scheduler.has_unfinished():
                raise RuntimeError("the scheduler could not place any request (this is a bug: "
                                   "every request fits the cache alone)")
            return []
        tokens: list[int] = []
        packed = []
        sample_rows: list[int] = []
        sampling: list[Scheduled] = []
        for item in batch:
            r = item.request
            tokens.extend(r.tokens[r.num_computed:r.num_computed + item.n])
            packed.append(PackedSeq(r.num_computed, item.n, r.block_table))
            if item.samples:
                sample_rows.append(len(tokens) - 1)
                sampling.append(item)
        self.stats.steps.append(StepRecord(
            len(batch), sum(i.n for i in batch if not i.is_decode), sum(1 for i in batch if i.is_decode)))
        positions = self.cache.set_batch(packed)
        tokens_t = torch.tensor(tokens, device=self.device)[None]
        hidden = self.model(tokens_t, positions, self.cache, return_hidden=True)
        picked = None
        if sampling:
            rows = torch.tensor(sample_rows, device=self.device)
            logits = self.model.lm_head(hidden[0].index_select(0, rows))
            picked = pick(logits, [i.request.sequence for i in sampling])
        for item in batch:
            self.scheduler.computed(item)
        if picked is None:
            return []
        outputs = []
        new_tokens, logprobs = picked.read()
        for item, token, logprob in zip(sampling, new_tokens, logprobs, strict=True):
            r = item.request
            done = r.sequence.append(token, logprob)
            got = [token] if (not done or r.sequence.stop_token is None) else []
            out = RequestOutput(r.request_id, got, r.sequence.take_delta(), done,
                                new_logprobs=[logprob] if (logprob is not None and got) else [])
            if done:
                out.completion = r.sequence.completion()
                self.scheduler.remove(r)
                del self._requests[r.request_id]
            outputs.append(out)
        return outputs

    # ------------------------------------------------------------------ whole runs

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Completion]:
        """Run every prompt to the end (all queued at once); completions in prompt order.
        One seeded ``params`` for several prompts samples row i with seed + i (as the
        Generator does)."""
        if params is None or isinstance(params, SamplingParams):
            shared = params or SamplingParams()
            params = [shared if shared.seed is None else dataclasses.replace(shared, seed=shared.seed + i)
                      for i in range(len(prompts))]
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        mine = set(ids)
        done: dict[str, Completion] = {}
        while len(done) < len(ids):
            for out in self.step():
                if out.finished and out.request_id in mine:
                    done[out.request_id] = out.completion
        return [done[i] for i in ids]
