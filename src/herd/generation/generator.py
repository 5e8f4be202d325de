"""Batched generation with a preallocated KV cache: ``Generator.generate / stream / chat``.

One call runs one batch to the end:

1. prefill: the prompts, right-padded to the longest, go through the model in one
   forward pass that fills the cache; the LM head runs only on each row's last prompt
   position (``return_hidden=True``), not on every position;
2. decode: one token per row per step, each row at its own position, until every row
   has finished (a finished row is still carried through the batch but no longer grows
   or is sampled).

Sampling and stop conditions are ``herd.generation.sampling``'s, shared with the engine.

Speed: decoding reads every weight once per step, so it runs at the memory bandwidth the
linear layers reach. On x86 CPUs the model's few-row products go to herd's gemv kernel
(``herd.generation.cpu_gemv``: it streams the weights from both cores, where
``F.linear``'s gemv reaches about what one core can pull). With ``compile=True`` the
decode step (the model on one token per row, then the LM head) is compiled with
``torch.compile`` over a static-shape cache, traced once per batch size and cache size
(15-40 s the first time on a 2-core CPU; inductor caches it on disk). On a CPU that fuses
the few hundred small ops between the linears, worth ~20% in bf16, whose eager
elementwise kernels are slow there, and little in fp32. On CUDA the compiled step is
also captured as a CUDA graph (``_GraphedStep``) over the cache and fixed input buffers,
so a step costs one launch instead of ~150: at batch 1 the host would otherwise be
slower than the GPU. The cache and its graph are kept for the next call of the same
batch size and cache length.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from herd.generation.cpu_gemv import use_cpu_gemv
from herd.generation.kv_cache import KVCache
from herd.generation.sampling import (
    Completion,
    SamplingParams,
    SequenceState,
    default_stop_tokens,
    pick,
    text_decoder,
)
from herd.model.transformer import Transformer

ParamsArg = SamplingParams | Sequence[SamplingParams] | None
CACHE_BUCKET = 256  # compiled decoding rounds the cache length up to this, to reuse graphs
MAX_GRAPHS = 4  # captured CUDA decode steps (each with its cache) kept for reuse
_NO_CUDAGRAPHS = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}


class TextStream:
    """Iterates over the text deltas of one generation; ``completion`` is set at the end.

    Deltas never split a UTF-8 character and never show text that a stop string later
    removes, so their concatenation is exactly ``completion.text``.
    """

    def __init__(self, steps: Iterator[None], sequence: SequenceState) -> None:
        self._steps, self._sequence = steps, sequence
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        for _ in self._steps:
            delta = self._sequence.take_delta()
            if delta:
                yield delta
        self.completion = self._sequence.completion()


class Generator:
    """Generates from a ``Transformer`` (any dtype, any device); text needs a tokenizer.

    On a CPU, unless ``cpu_gemv=False``, the model's ``nn.Linear`` layers become
    ``GemvLinear`` in place (same parameters and state_dict; see ``cpu_gemv``).
    """

    def __init__(self, model: Transformer, tokenizer: Any = None, *, compile: bool = False,
                 compile_mode: str | None = None, cpu_gemv: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.args = model.args
        weight = model.model.embed_tokens.weight  # the compute dtype (a quantized LM head holds int8)
        self.device, self.dtype = weight.device, weight.dtype
        self.compile = compile
        compile_mode = compile_mode or "default"
        if self.device.type == "cuda":  # herd captures the CUDA graph itself (_GraphedStep): not inductor too
            compile_mode = _NO_CUDAGRAPHS.get(compile_mode, compile_mode)
        self.compile_mode = compile_mode
        self._compiled_step = None
        self._graphs: dict[tuple[int, int], _GraphedStep] = {}  # (batch, cache length) -> graph
        self.gemv_layers = use_cpu_gemv(model) if cpu_gemv and self.device.type == "cpu" else 0

    # ------------------------------------------------------------------ public API

    def generate(self, prompts: Sequence[Sequence[int]], params: ParamsArg = None) -> list[Completion]:
        """Complete each prompt (token ids). One ``params`` for all, or one per prompt.

        With one seeded ``params`` for several prompts, row i samples with seed + i.
        """
        sequences = self._sequences(prompts, params)
        for _ in self._run(sequences):
            pass
        return [s.completion() for s in sequences]

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> TextStream:
        """Text deltas of one completion as they are generated (needs a tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("Generator.stream needs a tokenizer to turn tokens into text")
        (sequence,) = self._sequences([prompt_ids], params)
        return TextStream(self._run([sequence]), sequence)

    def chat(self, messages: Sequence[Any], params: SamplingParams | None = None, *,
             tools: Sequence[Any] = (), tool_format: str = "json") -> Any:
        """Answer a dialog with the next assistant ``Message`` (herd.tokenizer's).

        ``messages`` are ``Message``s or ``{"role", "content"}`` dicts. ``tools`` holds
        built-in tool names ("brave_search", "code_interpreter", ...) and custom tool
        definitions (``ToolDefinition`` or OpenAI-style dicts); with tools, the system
        prompt is built by ``prepare_dialog``. The reply is encoded and parsed with
        ``ChatFormat``: tool calls come back in ``tool_calls`` (not in ``content``), and
        ``stop_reason`` says whether the model ended its turn (<|eot_id|>) or waits for
        a tool result (<|eom_id|>).
        """
        if self.tokenizer is None:
            raise ValueError("Generator.chat needs a tokenizer")
        from herd.tokenizer import ChatFormat, Message, prepare_dialog

        dialog = [m if isinstance(m, Message) else Message.from_dict(m) for m in messages]
        if tools:
            builtin = [t for t in tools if isinstance(t, str)]
            custom = [t for t in tools if not isinstance(t, str)]
            dialog = prepare_dialog(dialog, tools=builtin, custom_tools=custom, tool_format=tool_format)
        chat_format = ChatFormat(self.tokenizer)
        prompt = chat_format.encode_dialog_prompt(dialog, tool_format)
        completion = self.generate([prompt], params)[0]
        return chat_format.decode_assistant_message(completion.token_ids, completion.stop_reason)

    # ------------------------------------------------------------------ setup

    def _sequences(self, prompts: Sequence[Sequence[int]], params: ParamsArg) -> list[SequenceState]:
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        if params is None:
            params = SamplingParams()
        if isinstance(params, SamplingParams):
            shared = params
            params = [shared] * len(prompts)
            if shared.seed is not None and len(prompts) > 1:
                import dataclasses

                params = [dataclasses.replace(shared, seed=shared.seed + i) for i in range(len(prompts))]
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        context, vocab = self.args.max_seq_len, self.args.vocab_size
        sequences = []
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            prompt = list(prompt)
            if not prompt:
                raise ValueError(f"prompt {i} is empty (it needs at least <|begin_of_text|>)")
            if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
                raise ValueError(f"prompt {i} holds token ids outside [0, vocab_size={vocab})")
            if len(prompt) + 1 > context:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} tokens but the model's context is {context} tokens: "
                    f"no room to generate (a prompt may have at most {context - 1} tokens)"
                )
            sequences.append(SequenceState(
                prompt, p,
                stop_token_ids=self._stop_tokens(p),
                decoder=text_decoder(self.tokenizer) if self.tokenizer is not None else None,
                max_new_tokens=min(p.max_new_tokens, context - len(prompt)),
                eom_id=getattr(self.tokenizer, "eom_id", None),
            ))
        return sequences

    def _stop_tokens(self, params: SamplingParams) -> tuple[int, ...]:
        return default_stop_tokens(params, self.tokenizer, self.args.eos_token_id)

    # ------------------------------------------------------------------ the loop

    @torch.inference_mode()
    def _run(self, sequences: list[SequenceState]) -> Iterator[None]:
        """Prefill, then decode until every sequence has finished; yields after each step."""
        lengths = [len(s.prompt_ids) for s in sequences]
        cache_len = max(n + s.max_new_tokens for n, s in zip(lengths, sequences, strict=True))
        if self.compile:
            cache_len = min(-(-cache_len // CACHE_BUCKET) * CACHE_BUCKET, self.args.max_seq_len)
        graphed = self._graphed(len(sequences), cache_len) if self.compile and self.device.type == "cuda" else None
        cache = graphed.cache if graphed is not None else KVCache(
            self.args, len(sequences), cache_len, dtype=self.dtype, device=self.device, static=self.compile)

        logits = self._prefill(cache, [s.prompt_ids for s in sequences])
        active = list(range(len(sequences)))
        picked = pick(logits, sequences)
        positions = list(lengths)  # where each row's next input token goes
        positions_t = torch.tensor(positions, device=self.device)[:, None]
        rows_t = None  # the active rows on the device, once some row has finished
        while True:
            # Launch the next step before reading this one's tokens back: on a GPU it runs
            # while the host checks stop conditions (a row that stops wastes one step).
            if any(sequences[i].will_continue() for i in active):
                tokens_t = picked.tokens if rows_t is None else \
                    torch.zeros(len(sequences), dtype=torch.long, device=self.device).index_copy_(
                        0, rows_t, picked.tokens)
                if graphed is not None:
                    logits = graphed(tokens_t[:, None], positions_t)
                else:
                    logits = self._decode(cache, tokens_t[:, None], positions_t, max(positions) + 1)
            tokens, logprobs = picked.read()
            for i, token, logprob in zip(active, tokens, logprobs, strict=True):
                sequences[i].append(token, logprob)
            yield
            if all(s.finished for s in sequences):
                return
            if any(sequences[i].finished for i in active):
                active = [i for i, s in enumerate(sequences) if not s.finished]
                rows_t = torch.tensor(active, device=self.device)
            positions = [p + 1 for p in positions]
            # Finished rows keep stepping, writing only to their own row of the cache.
            positions_t = (positions_t + 1).clamp_(max=cache.max_len - 1)
            picked = pick(logits if rows_t is None else logits[rows_t], [sequences[i] for i in active])

    def _prefill(self, cache: KVCache, prompts: list[list[int]]) -> Tensor:
        b, t = len(prompts), max(len(p) for p in prompts)
        tokens = torch.zeros(b, t, dtype=torch.long)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        tokens = tokens.to(self.device)
        positions = torch.arange(t, device=self.device).expand(b, t)
        cache.set_positions(positions, kv_len=t, start=0)
        hidden = self.model(tokens, positions, cache, return_hidden=True)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        return self.model.lm_head(hidden[torch.arange(b, device=self.device), last])  # (B, vocab)

    def _decode(self, cache: KVCache, tokens: Tensor, positions: Tensor, kv_len: int) -> Tensor:
        """Next-token logits for one token per row (B, 1) at ``positions`` (B, 1)."""
        if not self.compile:
            start = kv_len - 1 if positions.shape[0] == 1 else None  # one row: a slice write
            return self._decode_step(cache, tokens, positions, min(kv_len, cache.max_len), start)
        return self._compiled(cache, tokens, positions, None)

    @property
    def _compiled(self):
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self._decode_step, mode=self.compile_mode, fullgraph=True)
        return self._compiled_step

    def _graphed(self, batch: int, cache_len: int) -> _GraphedStep:
        """The captured decode step for this batch size and cache length (the last few kept)."""
        key = (batch, cache_len)
        if key not in self._graphs:
            while len(self._graphs) >= MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            cache = KVCache(self.args, batch, cache_len, dtype=self.dtype, device=self.device, static=True)
            try:
                self._graphs[key] = _GraphedStep(self._compiled, cache, compiled=True)
            except RuntimeError as e:  # the compiled step would not settle: capture the eager one
                warnings.warn(f"capturing the compiled decode step failed ({e}); capturing the eager step",
                              stacklevel=3)
                self._graphs[key] = _GraphedStep(self._decode_step, cache, compiled=False)
        graphed = self._graphs.pop(key)
        self._graphs[key] = graphed  # most recently used last
        return graphed

    def _decode_step(self, cache: KVCache, tokens: Tensor, positions: Tensor, kv_len: int | None,
                     start: int | None = None) -> Tensor:
        """One token per row -> next-token logits (B, vocab)."""
        cache.set_positions(positions, kv_len, start=start)
        hidden = self.model(tokens, positions, cache, return_hidden=True)
        return self.model.lm_head(hidden[:, -1])


class _GraphedStep:
    """A decode step captured as a CUDA graph: fixed buffers for the tokens and positions
    (B, 1), a static ``KVCache`` of its own, and the logits buffer the replay writes.

    Warm-up and capture run before any prompt is in the cache (they write the slots of
    position 0, which the next prefill overwrites). A replay's logits live until the
    next replay; everything that reads them (sampling) is queued on the same stream
    before it.
    """

    def __init__(self, step: Any, cache: KVCache, *, compiled: bool) -> None:
        device = cache.k[0].device
        self.cache, self.compiled = cache, compiled
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            # compile (a second time once the model's per-device caches are filled), autotune
            # and create the library handles outside the capture; then prove that the
            # compiled step has settled, since compiling inside a capture breaks it
            for _ in range(3):
                step(cache, self.tokens, self.positions, None)
            with self._no_recompile():
                step(cache, self.tokens, self.positions, None)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with self._no_recompile(), torch.cuda.graph(self.graph):
            self.logits = step(cache, self.tokens, self.positions, None)

    def _no_recompile(self):
        if self.compiled:
            return torch.compiler.set_stance("fail_on_recompile")
        return contextlib.nullcontext()

    def __call__(self, tokens: Tensor, positions: Tensor) -> Tensor:
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.graph.replay()
        return self.logits
