"""The filters of ``herd synth``: which generated (instruction, response) pairs become SFT data.

Each candidate meets the filters in a fixed order, cheapest first, and is dropped by the
first that rejects it; the report counts the drops of each filter:

1. ``length``: instruction and response lengths (characters) within bounds, non-empty;
   with ``drop_truncated`` also responses cut off by ``max_new_tokens``.
2. ``exact_dedup``: the same normalised instruction + response seen before
   (``herd.data.dedup.ExactDedup``, the curation pipeline's step).
3. ``near_dedup``: MinHash-LSH near duplicates (``herd.data.dedup.MinHashDedup``).
4. ``code_parse``: for a code seed, the response's code (its fenced ``python`` blocks, or
   the whole response without a fence) must parse (``ast``).
5. ``unit_tests``: for a code seed that carries ``tests``, the code followed by the tests
   must exit 0 in the sandbox (``herd.posttrain.sandbox``: no network, rlimits, timeout).
6. ``reward``: with a reward model, its score of the response must reach ``min_reward``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from herd.posttrain.sandbox import SandboxLimits, run_python

FILTERS = ("length", "exact_dedup", "near_dedup", "code_parse", "unit_tests", "reward")
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class Candidate:
    """One generated example and where it came from."""

    seed_id: str
    instruction: str
    response: str
    kind: str = "text"  # "code": parse / test it
    tests: str | None = None  # Python run after the response's code (asserts)
    system: str | None = None
    finish_reason: str = "stop"
    score: float | None = None
    sandbox: dict[str, Any] | None = None


@dataclass
class FilterConfig:
    min_chars: int = 1
    max_chars: int = 8000
    max_instruction_chars: int = 4000
    drop_truncated: bool = False
    exact_dedup: bool = True
    near_dedup: float = 0.8  # MinHash similarity threshold; 0 turns near-dedup off
    code_parse: bool = True
    unit_tests: bool = True
    min_reward: float | None = None  # needs a reward model
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)


def extract_code(response: str) -> str:
    """The Python a response holds: its fenced python blocks joined, else the whole text."""
    blocks = _FENCE.findall(response)
    return "\n\n".join(b.strip("\n") for b in blocks) if blocks else response


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return bool(code.strip())


def _dedup_drops(texts: list[str], step: Any) -> set[int]:
    """Positions ``step`` (a herd.data.dedup global step) drops among ``texts``, in order."""
    from herd.data.records import make_record

    scan = step.new_scan()
    records = [make_record(str(i), t) for i, t in enumerate(texts)]
    for rec in records:
        scan.add(rec)
    state = step.fit([scan.result()])[0]
    return {i for i, rec in enumerate(records) if step.apply(rec, i, state) is not None}


def filter_candidates(candidates: Sequence[Candidate], cfg: FilterConfig,
                      score: Callable[[Candidate], float] | None = None) -> tuple[list[Candidate], dict[str, int]]:
    """The candidates that pass every filter (in order) and the number dropped by each."""
    dropped = dict.fromkeys(FILTERS, 0)
    alive: list[Candidate] = []
    for c in candidates:
        r, i = c.response.strip(), c.instruction.strip()
        if (not r or not i or not cfg.min_chars <= len(r) <= cfg.max_chars or len(i) > cfg.max_instruction_chars
                or (cfg.drop_truncated and c.finish_reason == "length")):
            dropped["length"] += 1
        else:
            alive.append(c)
    for name, enabled in (("exact_dedup", cfg.exact_dedup), ("near_dedup", cfg.near_dedup > 0)):
        if not enabled or not alive:
            continue
        from herd.data.dedup import ExactDedup, MinHashDedup

        step = ExactDedup() if name == "exact_dedup" else MinHashDedup(threshold=cfg.near_dedup)
        drops = _dedup_drops([f"{c.instruction}\n{c.response}" for c in alive], step)
        dropped[name] += len(drops)
        alive = [c for k, c in enumerate(alive) if k not in drops]
    kept = []
    for c in alive:
        if c.kind == "code":
            code = extract_code(c.response)
            if cfg.code_parse and not parses(code):
                dropped["code_parse"] += 1
                continue
            if cfg.unit_tests and c.tests:
                result = run_python(code + "\n\n" + c.tests, cfg.sandbox)
                c.sandbox = {"passed": result.passed, "returncode": result.returncode,
                             "timed_out": result.timed_out, "isolation": result.isolation}
                if not result.passed:
                    dropped["unit_tests"] += 1
                    continue
        if cfg.min_reward is not None:
            if score is None:
                raise ValueError("filters.min_reward is set but no reward model was given (synth.reward_model)")
            c.score = float(score(c))
            if c.score < cfg.min_reward:
                dropped["reward"] += 1
                continue
        kept.append(c)
    return kept, dropped
