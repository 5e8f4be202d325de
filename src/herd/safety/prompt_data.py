"""The prompt-attack data herd ships (``herd/safety/data/prompt_guard_data.jsonl``) and how it was built.

Records are ``{"text", "label", "source", "language"}`` with label BENIGN, INJECTION or JAILBREAK and
the language in lower case (CyberSecEval's ``speaking_language``, chatterbot's directory name):

- ``cyberseceval-en``: CyberSecEval's 251 English prompt-injection cases (MIT, Meta PurpleLlama,
  commit 4be64c3): each ``user_input`` is an attack, JAILBREAK for direct injections (the user
  talks the model out of its instructions), INJECTION for indirect ones (instructions hidden in
  data); each distinct ``test_case_prompt`` (a system prompt) is BENIGN.
- ``cyberseceval-multilingual``: the same for the 1,004 machine-translated cases, 16 languages.
- ``chatterbot``: benign dialogue lines from chatterbot-corpus 1.3.3 (BSD-3-Clause, PyPI), up to
  ``per_language`` lines from each of its 28 languages.

``herd guard train-prompt`` trains on every source but the held-out one (default
``cyberseceval-multilingual``: unseen languages and phrasings) and reports precision/recall on it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).parent / "data" / "prompt_guard_data.jsonl"
LABELS = ("BENIGN", "INJECTION", "JAILBREAK")


def load_records(path: str | Path = DATA) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt-guard data not found: {path}")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("label") not in LABELS or not isinstance(rec.get("text"), str):
            raise ValueError(f"{path}:{i}: needs 'text' (str) and 'label' in {LABELS}")
        out.append(rec)
    return out


def mix_languages(records: list[dict], copies: int, seed: int = 0) -> list[dict]:
    """English records of the sources that hold attacks, each wrapped ``copies`` times in two benign
    lines of one other language (source ``"mixed"``): extra training records that remove a confound.

    herd's attacks are all English and its other languages all benign, so a classifier learns a
    script as a label: "not English" reads as benign and hides attacks. Wrapped this way every
    language's text also stands beside attacks (and beside English benign prompts, so "mixed" is no
    label either), and only the English part decides. Records need a ``language`` field; those
    without one take no part (and with no non-English benign lines nothing is added).
    """
    if copies <= 0:
        return []
    attack_sources = {r.get("source") for r in records if r["label"] != "BENIGN"}
    context: dict[str, list[str]] = {}
    for r in records:
        if r["label"] == "BENIGN" and r.get("language") not in (None, "english"):
            context.setdefault(r["language"], []).append(r["text"])
    base = [r for r in records if r.get("language") == "english" and r.get("source") in attack_sources]
    if not context or not base:
        return []
    rng = random.Random(seed)
    languages = sorted(context)
    out = []
    for r in base:
        for _ in range(copies):
            lang = rng.choice(languages)
            before, after = rng.choice(context[lang]), rng.choice(context[lang])
            out.append({"text": f"{before} {r['text']} {after}", "label": r["label"], "source": "mixed",
                        "language": lang})
    return out


def build(cyberseceval_dir: Path, chatterbot_dir: Path, out: Path = DATA, per_language: int = 60,
          seed: int = 0) -> int:
    """Write the JSON Lines file from the two sources (run once; the output is checked in)."""
    import yaml

    rows: list[dict] = []
    for name, source in (("prompt_injection.json", "cyberseceval-en"),
                         ("prompt_injection_multilingual_machine_translated.json", "cyberseceval-multilingual")):
        cases = json.loads((cyberseceval_dir / name).read_text(encoding="utf-8"))
        prompt_language: dict[str, str] = {}
        for c in cases:
            label = "INJECTION" if c["injection_type"] == "indirect" else "JAILBREAK"
            language = c["speaking_language"].lower()
            rows.append({"text": c["user_input"], "label": label, "source": source, "language": language})
            prompt_language.setdefault(c["test_case_prompt"], language)
        for prompt in sorted(prompt_language):
            rows.append({"text": prompt, "label": "BENIGN", "source": source, "language": prompt_language[prompt]})
    rng = random.Random(seed)
    for lang_dir in sorted(p for p in chatterbot_dir.iterdir() if p.is_dir()):
        lines: list[str] = []
        for f in sorted(lang_dir.glob("*.yml")):
            try:
                doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                continue
            for conv in doc.get("conversations") or []:
                lines += [s.strip() for s in conv if isinstance(s, str) and len(s.strip()) > 1]
        lines = sorted(set(lines))
        rng.shuffle(lines)
        rows += [{"text": s, "label": "BENIGN", "source": "chatterbot", "language": lang_dir.name}
                 for s in lines[:per_language]]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.rename(out)
    return len(rows)
