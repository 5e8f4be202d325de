"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one pass.

Decoding is bound by reading the weights, so the target verifying k + 1 positions in one
forward pass costs about as much as decoding one. Each round (Leviathan et al. 2023,
Chen et al. 2023):

1. the draft samples d_1..d_k one at a time from its distributions q_1..q_k;
2. the target runs once over [last token, d_1..d_k] and gives p_1..p_{k+1};
3. d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)), in order; at the first
   rejection the token is drawn instead from the residual max(0, p_i - q_i) (normalised)
   and the round ends; if all k are accepted, one more token comes from p_{k+1}.

Every emitted token is then distributed exactly as the target alone would sample it
(the accept/residual mixture sums to p_i), whatever the draft. p and q are the
distributions ``pick`` samples from (``sampling_probs``: temperature, top-k, top-p,
min-p); for greedy requests they are one-hot, so a draft token is kept exactly when it
is the target's arg-max and otherwise replaced by it: the output is the target's own
greedy output. The acceptance rate (accepted / proposed) is reported per call.

Both models keep a preallocated ``KVCache``; a rejected draft's keys are simply
overwritten later (the cache's mask hides positions past the query). Requests are
decoded one at a time (batch 1, where speculation pays). Logits processors and the
repetition penalty are not supported here (they would have to be replayed for every
draft position); such requests raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from herd.generation.generator import Generator
from herd.generation.kv_cache import KVCache
from herd.generation.sampling import Completion, SamplingParams, TokenLogprob, sampling_probs
from herd.model.transformer import Transformer


@dataclass
class SpeculativeCompletion:
    """A completion and how the draft fared: ``accepted`` of ``proposed`` draft tokens."""

    completion: Completion
    proposed: int
    accepted: int
    target_passes: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class SpeculativeGenerator:
    """Generates from ``target`` with ``draft`` proposing ``k`` tokens per target pass.

    The two models must share the tokenizer (same vocabulary size); they may differ in
    everything else (a Llama 3.2 1B drafting for an 8B). On a CPU their linears use
    herd's gemv kernel, as in ``Generator``.
    """

    def __init__(self, target: Transformer, draft: Transformer, tokenizer: Any = None, *, k: int = 4,
                 cpu_gemv: bool = True) -> None:
        if k < 1:
            raise ValueError(f"speculative k (draft tokens per round) must be >= 1, got {k}")
        if target.args.vocab_size != draft.args.vocab_size:
            raise ValueError(f"draft vocabulary ({draft.args.vocab_size}) differs from the target's "
                             f"({target.args.vocab_size}): the draft must share the target's tokenizer")
        self.target = Generator(target, tokenizer, cpu_gemv=cpu_gemv)
        self.draft = Generator(draft, tokenizer, cpu_gemv=cpu_gemv)
        self.k = k

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> SpeculativeCompletion:
        params = params or SamplingParams()
        if params.repetition_penalty != 1 or params.logits_processors:
            raise ValueError("speculative decoding supports no repetition_penalty or logits_processors "
                             "(use Generator or the engine for those requests)")
        (seq,) = self.target._sequences([prompt_ids], params)
        device = self.target.device
        rng = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        context = list(seq.prompt_ids)
        cache_len = len(context) + seq.max_new_tokens + self.k + 1
        t_cache = KVCache(self.target.args, 1, cache_len, dtype=self.target.dtype, device=device)
        d_cache = KVCache(self.draft.args, 1, cache_len, dtype=self.draft.dtype, device=self.draft.device)
        if len(context) > 1:  # the prompt but its last token: that one starts the first round
            self._forward(self.target, t_cache, context[:-1], 0, last_only=True)
        draft_done = 0  # tokens of ``context`` whose keys the draft's cache holds
        proposed = accepted = passes = 0
        while not seq.finished:
            k = min(self.k, seq.max_new_tokens - len(seq.output_ids) - 1)
            drafts: list[int] = []
            q_rows: list[Tensor] = []
            if k > 0:
                logits = self._forward(self.draft, d_cache, context[draft_done:], draft_done, last_only=True)
                draft_done = len(context)
                for j in range(k):
                    q = sampling_probs(logits, params)[0]
                    d = int(torch.multinomial(q, 1, generator=rng)) if not params.greedy else int(q.argmax())
                    drafts.append(d)
                    q_rows.append(q)
                    if j < k - 1:
                        logits = self._forward(self.draft, d_cache, [d], len(context) + j, last_only=True)
            start = len(context) - 1
            t_logits = self._forward(self.target, t_cache, [context[-1]] + drafts, start)  # (k + 1, V)
            passes += 1
            p = sampling_probs(t_logits, params)
            new: list[int] = []
            for j, d in enumerate(drafts):
                if params.greedy:
                    ok = bool(p[j, d] > 0)
                else:
                    u = float(torch.rand((), generator=rng, device=device))
                    ok = u * float(q_rows[j][d]) <= float(p[j, d])
                if not ok:
                    residual = (p[j] - q_rows[j]).clamp_(min=0)
                    new.append(int(residual.argmax()) if params.greedy else
                               int(torch.multinomial(residual / residual.sum(), 1, generator=rng)))
                    break
                new.append(d)
            else:
                new.append(int(p[len(drafts)].argmax()) if params.greedy else
                           int(torch.multinomial(p[len(drafts)], 1, generator=rng)))
            m = len(new) - 1  # drafts accepted this round
            proposed += len(drafts)
            accepted += m
            logprobs = self._logprobs(t_logits[: len(new)], new, params)
            for token, logprob in zip(new, logprobs, strict=True):
                if seq.append(token, logprob):
                    break
            # The draft's cache holds the old context and drafts[:k-1]; keep what was accepted.
            draft_done = min(draft_done + min(m, max(k - 1, 0)), len(context) + m)
            context.extend(new)
        return SpeculativeCompletion(seq.completion(), proposed, accepted, passes)

    def _forward(self, gen: Generator, cache: KVCache, tokens: list[int], start: int, *,
                 last_only: bool = False) -> Tensor:
        """Run ``tokens`` at positions start.. through ``gen``'s model; fp32 logits of the
        last position (1, V) or of every position (T, V)."""
        t = len(tokens)
        ids = torch.tensor([tokens], device=gen.device)
        positions = torch.arange(start, start + t, device=gen.device)[None]
        cache.set_positions(positions, kv_len=start + t, start=start)
        hidden = gen.model(ids, positions, cache, return_hidden=True)[0]
        if last_only:
            hidden = hidden[-1:]
        return gen.model.lm_head(hidden).float()

    @staticmethod
    def _logprobs(logits: Tensor, tokens: list[int], params: SamplingParams) -> list[TokenLogprob | None]:
        """The target's raw logprobs of the emitted tokens, as ``pick`` reports them."""
        if params.logprobs is None:
            return [None] * len(tokens)
        logp = logits.log_softmax(dim=-1)
        top_v, top_i = logp.topk(max(params.logprobs, 1), dim=-1)
        out: list[TokenLogprob | None] = []
        for j, token in enumerate(tokens):
            top = list(zip(top_i[j].tolist(), top_v[j].tolist(), strict=True))[: params.logprobs]
            out.append(TokenLogprob(token, float(logp[j, token]), top))
        return out
