"""Sampling, logprobs and stop conditions: from a batch of logits to finished completions.

This is the one module the simple generator (``herd.generation.generator``) and the
continuous-batching engine share. Per request there is a ``SamplingParams`` (what the
caller asked for) and a ``Sequence`` (what has happened so far: tokens, text, logprobs,
why it stopped). Per step, ``sample(logits, sequences)`` picks one token per row and
``Sequence.append`` records it and checks the stop conditions.

The logits of each row go through, in this order (the order of transformers' generate):

1. the request's logits processors (``fn(generated_ids, logits) -> logits``, the hook for
   constrained decoding);
2. the repetition penalty (CTRL / transformers semantics: over every token of the prompt
   and of the output, positive logits are divided by the penalty, negative multiplied);
3. temperature (0 means greedy: the arg-max of the logits after steps 1-2);
4. top-k, then top-p (the smallest set of most-likely tokens whose mass reaches p), then
   min-p (tokens whose probability is at least min_p times the most likely one's);
5. a draw from the remaining distribution with the request's own ``torch.Generator``, so
   a seeded request samples the same tokens again.

Logprobs are those of the model: ``log_softmax`` of the raw logits, before any
processor, penalty, temperature or truncation (what OpenAI's API and vLLM's default
report). They are given for the chosen token and, when asked, the top-n alternatives.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

LogitsProcessor = Callable[[list[int], Tensor], Tensor]
FinishReason = Literal["stop", "length"]
StopReasonName = Literal["end_of_turn", "end_of_message", "out_of_tokens"]


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the sampler. Defaults are Llama 3's generation_config
    (temperature 0.6, top_p 0.9); ``temperature=0`` decodes greedily.

    ``stop_token_ids=None`` stops on the tokenizer's stop tokens (<|eot_id|>,
    <|eom_id|>, <|end_of_text|>), or the model config's eos ids without a tokenizer;
    an empty tuple never stops on a token. ``stop`` holds stop strings (matched on the
    decoded text, across token boundaries, and removed from the output).
    ``logprobs=None`` records no logprobs; ``n`` records the chosen token's logprob and
    the ``n`` most likely alternatives.
    """

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    logits_processors: tuple[LogitsProcessor, ...] = ()

    def __post_init__(self) -> None:
        # Accept lists (and a single stop string) from callers; store tuples.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        for name in ("stop", "stop_token_ids", "logits_processors"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} must be {rule}, got {getattr(self, name)!r}")

        if not _is_number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise bad("temperature", "a finite number >= 0 (0 = greedy)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 = off)")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise bad("min_p", "in [0, 1]")
        if (not _is_number(self.repetition_penalty) or not math.isfinite(self.repetition_penalty)
                or self.repetition_penalty <= 0):
            raise bad("repetition_penalty", "a finite number > 0 (1 = off)")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "an integer or None")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "an integer >= 1")
        if self.stop_token_ids is not None and not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "a sequence of token ids >= 0, or None")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "a sequence of non-empty strings")
        if self.logprobs is not None and (not _is_int(self.logprobs) or self.logprobs < 0):
            raise bad("logprobs", "None or an integer >= 0 (the number of alternatives)")
        if not all(callable(p) for p in self.logits_processors):
            raise bad("logits_processors", "a sequence of callables (generated_ids, logits) -> logits")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# --------------------------------------------------------------------------- logits


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: Tensor) -> Tensor:
    """CTRL's penalty over the tokens marked in ``seen`` (B, V): positive logits are
    divided by ``penalty`` (B,), negative ones multiplied (transformers' semantics)."""
    p = penalty[:, None].to(logits.dtype)
    penalized = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen, penalized, logits)


def apply_top_k(logits: Tensor, k: Tensor) -> Tensor:
    """Keep the k (B,) largest logits of each row (ties with the k-th kept); 0 = off."""
    on = k > 0
    if not bool(on.any()):
        return logits
    k = k.clamp(max=logits.shape[-1])
    top = logits.topk(int(k[on].max()), dim=-1).values
    kth = top.gather(-1, (k.clamp(min=1) - 1)[:, None])
    kth = torch.where(on[:, None], kth, torch.full_like(kth, -math.inf))
    return logits.masked_fill(logits < kth, -math.inf)


def apply_top_p(logits: Tensor, p: Tensor, *, candidates: int = 1024) -> Tensor:
    """Keep, per row, the most likely tokens up to the first whose cumulative probability
    reaches p (B,): a token stays when the mass of the tokens ranked above it is < p.

    Ranking the whole vocabulary (a 128K-long sort) is the slow part, so the top
    ``candidates`` tokens are ranked first; only when they hold less than p of the mass
    (a flat distribution) is the full vocabulary sorted. Both give the same set.
    """
    on = p < 1
    if not bool(on.any()):
        return logits
    probs = logits.softmax(dim=-1)
    if candidates < probs.shape[-1]:
        top_probs, order = probs.topk(candidates, dim=-1)  # sorted, most likely first
        if bool((top_probs.sum(dim=-1) < p)[on].any()):
            top_probs, order = probs.sort(dim=-1, descending=True)
    else:
        top_probs, order = probs.sort(dim=-1, descending=True)
    mass_above = top_probs.cumsum(dim=-1) - top_probs
    keep_ranked = mass_above < p[:, None]
    keep_ranked[:, 0] = True  # the most likely token always survives
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, keep_ranked)
    return logits.masked_fill(~keep & on[:, None], -math.inf)


def apply_min_p(logits: Tensor, min_p: Tensor) -> Tensor:
    """Drop tokens whose probability is below min_p (B,) times the row's top probability."""
    if not bool((min_p > 0).any()):
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, -math.inf)


@dataclass
class TokenLogprob:
    """The model's log-probability of a generated token, and of the ``top`` alternatives
    (token id, logprob), most likely first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def default_stop_tokens(params: SamplingParams, tokenizer: Any, eos_token_id: int | Sequence[int]) -> tuple[int, ...]:
    """The request's stop tokens: its own, else the tokenizer's (eot, eom, end_of_text), else the model's eos."""
    if params.stop_token_ids is not None:
        return params.stop_token_ids
    stop = getattr(tokenizer, "stop_tokens", None)
    if stop is not None:
        return tuple(stop)
    return (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)


def sample(logits: Tensor, sequences: Sequence[SequenceState]) -> tuple[list[int], list[TokenLogprob | None]]:
    """One next token per row of ``logits`` (B, V), row i belonging to ``sequences[i]``.

    Returns the token ids and, for requests that asked for them, their logprobs.
    """
    return pick(logits, sequences).read()


@dataclass
class Picked:
    """Tokens chosen on the logits' device and not read back yet: ``tokens`` can feed the
    next forward pass while the host is busy; ``read()`` waits for them."""

    tokens: Tensor  # (B,) long
    params: list[SamplingParams]
    logprob_rows: list[int]  # rows that asked for logprobs
    logprob_values: tuple[Tensor, Tensor, Tensor] | None  # chosen (W,), top values (W, n), top ids (W, n)

    def read(self) -> tuple[list[int], list[TokenLogprob | None]]:
        tokens = self.tokens.tolist()
        out: list[TokenLogprob | None] = [None] * len(tokens)
        if self.logprob_values is not None:
            chosen, top_v, top_i = (t.tolist() for t in self.logprob_values)
            for j, i in enumerate(self.logprob_rows):
                k = self.params[i].logprobs
                out[i] = TokenLogprob(tokens[i], chosen[j], list(zip(top_i[j][:k], top_v[j][:k], strict=True)))
        return tokens, out


def pick(logits: Tensor, sequences: Sequence[SequenceState]) -> Picked:
    """``sample`` without reading the result back. Greedy rows with no processor or
    penalty never wait for the device; the truncations of sampled rows may."""
    if logits.dim() != 2 or logits.shape[0] != len(sequences):
        raise ValueError(f"logits must be ({len(sequences)}, vocab), got shape {tuple(logits.shape)}")
    raw = logits.float()
    params = [s.params for s in sequences]
    x = raw
    for i, s in enumerate(sequences):
        for processor in s.params.logits_processors:
            if x is raw:
                x = raw.clone()
            x[i] = processor(list(s.output_ids), x[i])
    if any(p.repetition_penalty != 1 for p in params):
        seen = torch.stack([s.seen_mask(raw.shape[-1], raw.device) for s in sequences])
        x = apply_repetition_penalty(x, seen, _param_tensor(params, "repetition_penalty", raw))

    greedy = [p.greedy for p in params]
    tokens = x.argmax(dim=-1)
    if not all(greedy):
        temperature = torch.tensor([p.temperature or 1.0 for p in params], device=raw.device)
        x = x / temperature[:, None]
        if any(p.top_k > 0 for p in params):
            x = apply_top_k(x, _param_tensor(params, "top_k", raw, dtype=torch.long))
        if any(p.top_p < 1 for p in params):
            x = apply_top_p(x, _param_tensor(params, "top_p", raw))
        if any(p.min_p > 0 for p in params):
            x = apply_min_p(x, _param_tensor(params, "min_p", raw))
        probs = x.softmax(dim=-1)
        for i, s in enumerate(sequences):
            if not greedy[i]:
                tokens[i] = _draw(probs[i], s.generator(raw.device))

    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    values = None
    if rows:
        logp = raw[rows].log_softmax(dim=-1)
        chosen = logp.gather(-1, tokens[rows][:, None])[:, 0]
        values = (chosen, *logp.topk(max(params[i].logprobs for i in rows), dim=-1))
    return Picked(tokens, params, rows, values)


def sampling_probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """The distribution ``pick`` draws from for rows of ``logits`` (N, V) that share
    ``params``: temperature, top-k, top-p and min-p applied, then softmax; for greedy
    params, the one-hot of the arg-max. Logits processors and the repetition penalty
    depend on a row's history and are left to the caller. Speculative decoding needs
    these probabilities themselves, for the draft and the target alike."""
    x = logits.float()
    if params.greedy:
        return torch.zeros_like(x).scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0)
    n = x.shape[0]
    x = x / params.temperature
    if params.top_k > 0:
        x = apply_top_k(x, torch.full((n,), params.top_k, dtype=torch.long, device=x.device))
    if params.top_p < 1:
        x = apply_top_p(x, torch.full((n,), params.top_p, device=x.device))
    if params.min_p > 0:
        x = apply_min_p(x, torch.full((n,), params.min_p, device=x.device))
    return x.softmax(dim=-1)


def _draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token from ``probs`` (V,): the arg-max of p_i / E_i with E_i ~ Exp(1) is token i
    with probability p_i (an exponential race; one pass, no cumulative sum or search)."""
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax()


def _param_tensor(params: list[SamplingParams], name: str, like: Tensor, dtype=torch.float32) -> Tensor:
    return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=like.device)


# --------------------------------------------------------------------------- text


class Detokenizer(Protocol):
    """Incremental token -> text: ``feed`` returns the newly completed text, ``flush``
    what is left at the end (an unfinished character becomes U+FFFD)."""

    def feed(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


def text_decoder(tokenizer: Any) -> Detokenizer:
    """An incremental detokenizer for ``tokenizer``: its own streaming decoder (a herd
    ``Tokenizer.stream()``) when it has one, else a ``TextDecoder`` over its token bytes."""
    stream = getattr(tokenizer, "stream", None)
    return stream() if callable(stream) else TextDecoder(tokenizer)


class TextDecoder:
    """Token ids to text one token at a time, holding back the bytes of an unfinished
    UTF-8 character until the token that completes it arrives (so a streamed delta
    never ends in half a character). Invalid bytes become U+FFFD, as in ``decode``.
    Anything with ``feed(id) -> str`` and ``flush() -> str`` can stand in for it."""

    def __init__(self, tokenizer: Any) -> None:
        self._token_bytes = token_bytes_fn(tokenizer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def token_bytes_fn(tokenizer: Any) -> Callable[[int], bytes]:
    """The tokenizer's id -> bytes function (a herd Tokenizer's ``decode_token_bytes``,
    or tiktoken's ``decode_single_token_bytes`` on an Encoding or a wrapper's ``model``)."""
    for owner in (tokenizer, getattr(tokenizer, "model", None)):
        for name in ("decode_token_bytes", "decode_single_token_bytes"):
            fn = getattr(owner, name, None)
            if callable(fn):
                return fn
    raise TypeError(
        f"{type(tokenizer).__name__} has no decode_token_bytes(token_id) -> bytes; "
        "streaming text needs the bytes of each token"
    )


# --------------------------------------------------------------------------- sequences


@dataclass
class Completion:
    """A finished generation.

    ``token_ids`` are the generated tokens without the stop token that ended them (it is
    ``stop_token``: <|eom_id|> means the model expects a tool result, <|eot_id|> that its
    turn is over). ``text`` is their decoded text with any matched stop string (``stop``)
    and what followed it removed; None without a tokenizer. ``finish_reason`` is "stop"
    (a stop token or string) or "length" (max_new_tokens or the context ran out).
    ``logprobs`` holds one entry per token of ``token_ids`` when asked for.
    ``stop_reason`` is the same in llama-models' terms (what ``ChatFormat.
    decode_assistant_message`` takes): "end_of_message" for <|eom_id|>,
    "out_of_tokens" for "length", else "end_of_turn".
    """

    token_ids: list[int]
    text: str | None
    finish_reason: FinishReason
    stop_token: int | None = None
    stop: str | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_tokens: int = 0
    stop_reason: StopReasonName = "end_of_turn"


class SequenceState:
    """The state of one request: its prompt, output so far, text and stop conditions.

    ``stop_token_ids`` are the resolved stop tokens (the generator fills in the defaults);
    ``decoder`` turns tokens into text (``text_decoder(tokenizer)``; None: no text);
    ``max_new_tokens`` may be smaller than the params' (the generator clamps it to the
    context left), and reaching it finishes the sequence with "length"; ``eom_id``
    (<|eom_id|>) tells an end-of-message stop from an end-of-turn one.
    """

    def __init__(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        stop_token_ids: Sequence[int] = (),
        decoder: Detokenizer | None = None,
        max_new_tokens: int | None = None,
        eom_id: int | None = None,
    ) -> None:
        if params.stop and decoder is None:
            raise ValueError("SamplingParams.stop (stop strings) needs a tokenizer to decode the text")
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.stop_token_ids = frozenset(stop_token_ids)
        self.eom_id = eom_id
        self.max_new_tokens = params.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.decoder = decoder
        self.text = "" if decoder is not None else None
        self.finish_reason: FinishReason | None = None
        self.stop_token: int | None = None
        self.stop: str | None = None
        self._streamed = 0  # characters of text already handed out by take_delta
        self._generator: torch.Generator | None = None
        self._seen: Tensor | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def will_continue(self) -> bool:
        """Whether the token being sampled now can be followed by another (not finished,
        and room left under max_new_tokens after it)."""
        return not self.finished and len(self.output_ids) + 1 < self.max_new_tokens

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The request's own random generator (None, the global one, when unseeded)."""
        if self.params.seed is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.params.seed)
        return self._generator

    def seen_mask(self, vocab_size: int, device: torch.device) -> Tensor:
        """(V,) bool: the tokens of prompt + output, for the repetition penalty."""
        if self._seen is None:
            self._seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [t for t in self.prompt_ids + self.output_ids if t < vocab_size]
            self._seen[torch.tensor(ids, dtype=torch.long, device=device)] = True
        return self._seen

    def append(self, token_id: int, logprob: TokenLogprob | None = None) -> bool:
        """Record a sampled token; returns True when the sequence has finished."""
        if self.finished:
            raise RuntimeError("append to a finished sequence")
        if token_id in self.stop_token_ids:
            self._finish("stop", stop_token=token_id)
            return True
        self.output_ids.append(token_id)
        if self.logprobs is not None and logprob is not None:
            self.logprobs.append(logprob)
        if self._seen is not None and token_id < self._seen.shape[0]:
            self._seen[token_id] = True
        if self.decoder is not None:
            new = self.decoder.feed(token_id)
            self.text += new
            if self.params.stop and new and self._match_stop_string(len(new)):
                return True
        if len(self.output_ids) >= self.max_new_tokens:
            self._finish("length")
        return self.finished

    def _match_stop_string(self, n_new: int) -> bool:
        """Look for a stop string that ends in the newest text (it may start in an earlier
        token's text); cut the text where the earliest match begins."""
        longest = max(len(s) for s in self.params.stop)
        start = max(0, len(self.text) - n_new - longest + 1)
        hits = [(i, s) for s in self.params.stop if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return False
        index, stop = min(hits)
        self.text = self.text[:index]
        self._finish("stop", stop=stop)
        return True

    def _finish(self, reason: FinishReason, *, stop_token: int | None = None,
                stop: str | None = None) -> None:
        self.finish_reason, self.stop_token, self.stop = reason, stop_token, stop
        if self.decoder is not None and stop is None:
            self.text += self.decoder.flush()  # trailing bytes of an unfinished character

    def take_delta(self) -> str:
        """New text safe to show: while running, hold back a tail that could still grow
        into a stop string (it is removed if it does); everything once finished."""
        if self.text is None:
            return ""
        end = len(self.text)
        if not self.finished and self.params.stop:
            end -= _stop_prefix_len(self.text, self.params.stop)
        end = max(end, self._streamed)
        delta, self._streamed = self.text[self._streamed:end], end
        return delta

    def completion(self) -> Completion:
        if not self.finished:
            raise RuntimeError("the sequence has not finished")
        if self.finish_reason == "length":
            stop_reason = "out_of_tokens"
        elif self.stop_token is not None and self.stop_token == self.eom_id:
            stop_reason = "end_of_message"
        else:
            stop_reason = "end_of_turn"
        return Completion(
            token_ids=list(self.output_ids),
            text=self.text,
            finish_reason=self.finish_reason,
            stop_token=self.stop_token,
            stop=self.stop,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            prompt_tokens=len(self.prompt_ids),
            stop_reason=stop_reason,
        )


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
