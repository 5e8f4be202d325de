"""Runs PurpleLlama's CodeShield (the peer) over JSON Lines from stdin, one JSON result per line.

Runs under the Python that has ``codeshield`` and ``semgrep==1.70.0`` installed (a separate venv:
semgrep pins click/rich versions herd's env does not want); ``benchmarks/codeshield.py`` starts it
with ``--peer-python``. Latency is measured here, in the peer's process, around
``CodeShield.scan_code`` alone. With ``--cyberseceval`` it runs Meta's insecure-code detector as
CyberSecEval does (every regex and semgrep rule, no early exit): the detector that labelled the
corpus, used to re-check its "secure" side.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

LANGS = {"c": "C", "cpp": "CPP", "csharp": "CSHARP", "java": "JAVA", "javascript": "JAVASCRIPT",
         "php": "PHP", "python": "PYTHON", "rust": "RUST"}


async def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # benchmarks/codeshield.py shadows it
    from codeshield.cs import CodeShield
    from codeshield.insecure_code_detector import insecure_code_detector
    from codeshield.insecure_code_detector.languages import Language
    from codeshield.insecure_code_detector.usecases import UseCase

    full = "--cyberseceval" in sys.argv  # the detector as CyberSecEval runs it: every rule, not greedy
    for line in sys.stdin:
        rec = json.loads(line)
        lang = getattr(Language, LANGS[rec["language"]]) if rec.get("language") else None
        t0 = time.perf_counter()
        if full:
            found = await insecure_code_detector.analyze(lang, rec["code"], usecase=UseCase.CYBERSECEVAL)
            treatment = "n/a"
        else:
            res = await CodeShield.scan_code(rec["code"], lang)
            found, treatment = res.issues_found or [], str(res.recommended_treatment.value)
        dt = time.perf_counter() - t0
        issues = [{"cwe": i.cwe_id, "rule": str(i.pattern_id).rsplit(".", 1)[-1],
                   "severity": str(getattr(i.severity, "value", i.severity)).lower(), "line": i.line,
                   "message": i.description} for i in found]
        print(json.dumps({"treatment": treatment, "findings": issues, "seconds": dt}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
