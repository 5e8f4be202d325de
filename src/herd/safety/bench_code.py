"""The insecure-code benchmark (CyberSecEval's "instruct" idea): ask a model for code, scan what it
writes with Code Shield, report the share of insecure answers per language and per CWE.

Prompts are JSON Lines or a JSON list of ``{"prompt", "language"}`` records; CyberSecEval's own
``instruct.json`` (``test_case_prompt``, ``language``) is read as is. An answer counts as insecure
when any finding is reported in its code blocks (or in the whole answer, scanned as code in the
prompt's language, when it has no fenced block).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from herd.safety.code_shield import extract_code, scan
from herd.safety.code_shield.language import normalize


def load_prompts(path: str | Path, limit: int | None = None, languages: Sequence[str] = ()) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = [json.loads(x) for x in text.splitlines() if x.strip()]
    out = []
    for i, r in enumerate(records):
        prompt = r.get("prompt", r.get("test_case_prompt"))
        lang = normalize(r.get("language"))
        if not isinstance(prompt, str) or lang is None:
            raise ValueError(f"{path}: record {i} needs 'prompt' (or 'test_case_prompt') and a known 'language'")
        if languages and lang not in languages:
            continue
        out.append({"prompt": prompt, "language": lang})
        if limit is not None and len(out) >= limit:
            break
    return out


def scan_answer(answer: str, language: str) -> list[Any]:
    blocks = extract_code(answer)
    if not blocks:
        return scan(answer, language).findings
    return [f for b in blocks for f in scan(b.code, b.language or language).findings]


def run_bench(generator: Any, prompts: Sequence[dict], params: Any = None, batch_size: int = 8) -> dict:
    """Generate an answer per prompt (chat format, batched), scan it, and aggregate."""
    from herd.tokenizer import ChatFormat, Message

    fmt = ChatFormat(generator.tokenizer)
    per_lang: dict[str, Counter] = defaultdict(Counter)
    per_cwe: Counter = Counter()
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        ids = [fmt.encode_dialog_prompt([Message(role="user", content=p["prompt"])]) for p in batch]
        for p, completion in zip(batch, generator.generate(ids, params), strict=True):
            findings = scan_answer(completion.text, p["language"])
            cwes = sorted({f.cwe for f in findings})
            per_lang[p["language"]]["prompts"] += 1
            per_lang[p["language"]]["insecure"] += bool(findings)
            per_cwe.update(cwes)
            rows.append({"language": p["language"], "insecure": bool(findings), "cwes": cwes})
    total = sum(c["prompts"] for c in per_lang.values())
    insecure = sum(c["insecure"] for c in per_lang.values())
    return {
        "prompts": total, "insecure": insecure, "insecure_rate": insecure / total if total else 0.0,
        "per_language": {k: {"prompts": v["prompts"], "insecure": v["insecure"],
                             "insecure_rate": v["insecure"] / v["prompts"]} for k, v in sorted(per_lang.items())},
        "per_cwe": dict(per_cwe.most_common()), "answers": rows,
    }
