"""Code Shield vs PurpleLlama's CodeShield on the frozen corpus: recall, false positives, latency.

    python benchmarks/codeshield.py --peer-python /path/to/venv/bin/python

The peer (``codeshield`` with ``semgrep==1.70.0``, which pins click/rich versions herd's env does
not take) runs in its own interpreter through ``benchmarks/codeshield_peer.py``, in the same run,
over the same snippets, with the language given to both; its latency is timed inside its process
around ``CodeShield.scan_code`` alone (semgrep subprocess included, as in real use), herd's around
``scan``. Without ``--peer-python`` the peer's frozen findings in benchmarks/data are used and no
latency ratio is reported. Recall counts insecure snippets and canaries with any finding; the
false-positive rate counts "secure" snippets with any finding (see benchmarks/data/README.md: the
secure side comes from real files and still holds real issues, so this over-counts for both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from herd.safety.code_shield import scan  # noqa: E402

DATA = Path(__file__).parent / "data"


def run_peer(python: str, rows: list[dict]) -> list[dict]:
    payload = "".join(json.dumps({"code": r["code"], "language": r["language"]}) + "\n" for r in rows)
    out = subprocess.run([python, str(Path(__file__).parent / "codeshield_peer.py")], input=payload,
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def run_herd(rows: list[dict], repeat: int) -> tuple[list[dict], list[float]]:
    results, times = [], []
    for r in rows:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            res = scan(r["code"], r["language"])
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        results.append({"findings": [f.to_dict() for f in res.findings], "treatment": res.treatment})
    return results, times


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", help="Python with codeshield + semgrep==1.70.0 (else: frozen peer findings)")
    ap.add_argument("--repeat", type=int, default=3, help="herd timing: best of N per snippet")
    args = ap.parse_args()
    rows = [json.loads(x) for x in (DATA / "codeshield_corpus.jsonl").read_text().splitlines()]
    if args.peer_python:
        peer = run_peer(args.peer_python, rows)
        peer_times = [p["seconds"] for p in peer]
    else:
        peer = [json.loads(x) for x in (DATA / "codeshield_peer_findings.jsonl").read_text().splitlines()]
        peer_times = []
    herd, herd_times = run_herd(rows, args.repeat)

    stats: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    misses, extra = [], []
    for i, (r, h, p) in enumerate(zip(rows, herd, peer, strict=True)):
        kind = "fp" if r["label"] == "secure" else "recall"
        s = stats[r["language"]][kind]
        s[0] += 1
        s[1] += bool(h["findings"])
        s[2] += bool(p["findings"])
        if p["findings"] and not h["findings"]:
            misses.append((i, r["language"], r["label"], sorted({f["rule"] for f in p["findings"]})))
        if r["label"] == "secure" and h["findings"] and not p["findings"]:
            extra.append((i, r["language"], sorted({f"{f['rule']} {f['cwe']}" for f in h["findings"]})))
    print(f"{'language':<11} {'recall herd':>11} {'recall peer':>11} {'FP herd':>8} {'FP peer':>8}")
    tot = defaultdict(int)
    for lang in sorted(stats):
        rec, fp = stats[lang]["recall"], stats[lang]["fp"]
        print(f"{lang:<11} {rec[1] / rec[0]:>11.2f} {rec[2] / rec[0]:>11.2f} "
              f"{fp[1] / fp[0]:>8.2f} {fp[2] / fp[0]:>8.2f}")
        for k, v in (("rn", rec[0]), ("rh", rec[1]), ("rp", rec[2]), ("fn", fp[0]), ("fh", fp[1]), ("fp", fp[2])):
            tot[k] += v
    print(f"{'all':<11} {tot['rh'] / tot['rn']:>11.2f} {tot['rp'] / tot['rn']:>11.2f} "
          f"{tot['fh'] / tot['fn']:>8.2f} {tot['fp'] / tot['fn']:>8.2f}")
    # Re-check of the "secure" side by the corpus's own labeller: Meta's detector in CyberSecEval mode
    # (every rule, no early exit; frozen output of `codeshield_peer.py --cyberseceval`, weggli absent).
    icd_path = DATA / "codeshield_icd_cyberseceval_findings.jsonl"
    icd = [json.loads(x) for x in icd_path.read_text().splitlines()]
    unconfirmed_h = unconfirmed_p = n_secure = labeller_flags = 0
    for r, h, p, i in zip(rows, herd, peer, icd, strict=True):
        if r["label"] == "secure":
            n_secure += 1
            labeller_flags += bool(i["findings"])
            unconfirmed_h += bool(h["findings"]) and not i["findings"]
            unconfirmed_p += bool(p["findings"]) and not i["findings"]
    print(f"secure side re-checked by Meta's full detector: it flags {labeller_flags}/{n_secure} 'secure' snippets; "
          f"findings it does not confirm: herd {unconfirmed_h / n_secure:.2f}, peer {unconfirmed_p / n_secure:.2f}")
    print(f"snippets the peer flags and herd does not: {len(misses)}")
    for m in misses:
        print("  ", *m)
    print(f"'secure' snippets herd flags and the peer does not: {len(extra)} "
          "(reviewed one by one in tests/safety/test_code_shield.py REVIEWED_SECURE_SIDE)")
    for e in extra:
        print("  ", *e)
    ms = [t * 1e3 for t in herd_times]
    print(f"herd latency per snippet: p50 {pct(ms, .5):.3f} ms, p99 {pct(ms, .99):.3f} ms, "
          f"mean {statistics.mean(ms):.3f} ms (best of {args.repeat})")
    if peer_times:
        pms = [t * 1e3 for t in peer_times]
        print(f"peer latency per snippet: p50 {pct(pms, .5):.3f} ms, p99 {pct(pms, .99):.3f} ms, "
              f"mean {statistics.mean(pms):.3f} ms (one run each)")
    print("note: 2-core machine shared with other workers; latencies are noisy.")
    recall_h, recall_p = tot["rh"] / tot["rn"], tot["rp"] / tot["rn"]
    fp_h, fp_p = tot["fh"] / tot["fn"], tot["fp"] / tot["fn"]
    print(f"figure: recall_vs_peer = {100 * (recall_h - recall_p):+.1f} points (target >= 0) "
          f"{'MET' if recall_h >= recall_p else 'MISSED'}")
    print(f"figure: false_positive_excess_vs_peer = {100 * (fp_h - fp_p):.1f} points (target <= 5) "
          f"{'MET' if fp_h - fp_p <= 0.05 else 'MISSED'}")
    print(f"figure: unconfirmed_false_positive_excess_vs_peer = {100 * (unconfirmed_h - unconfirmed_p) / n_secure:.1f} "
          f"points (target <= 5) {'MET' if (unconfirmed_h - unconfirmed_p) / n_secure <= 0.05 else 'MISSED'}")
    if peer_times:
        ratio = statistics.mean(peer_times) / statistics.mean(herd_times)
        print(f"figure: mean_latency_speedup_vs_codeshield = {ratio:.0f} x (target >= 10) "
              f"{'MET' if ratio >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
