"""Code Shield: against PurpleLlama CodeShield's findings (frozen from a run of the peer, see
benchmarks/data/README.md) on a corpus frozen before herd's rules, plus API behaviour."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from herd.safety.code_shield import extract_code, infer_language, scan, scan_output

DATA = Path(__file__).parents[2] / "benchmarks" / "data"

# Snippets the peer flags and herd does not, and why (index in codeshield_corpus.jsonl).
EXPLAINED_MISSES = {
    92: "new XmlDocument() + Load(path): XXE only on .NET Framework < 4.5.2, where XmlResolver defaults to a "
        "URL resolver; since 4.5.2 it is null by default. herd flags explicit DTD/resolver settings instead "
        "(flagging every XmlDocument added 4 false positives on the corpus's secure side).",
    108: "UnityEngine.Random.Range in game code: the peer's C# weak-PRNG rule matches any Random.Range; "
         "herd flags System.Random construction (new Random()), not a game engine's helper.",
    126: "Cipher.getInstance(\"AES/CTR/NoPadding\"): the peer reports 'RSA without OAEP' for any */NoPadding "
         "transformation; AES-CTR is not RSA and needs no padding.",
    7: "openssl/evp.h prototypes (const EVP_CIPHER *EVP_bf_ecb(void);): a declaration uses no cipher; herd's C "
       "crypto rules report calls, not prototypes (rules.context.is_c_call), which also drops secure #28/#37.",
    9: "openssl/evp.h prototypes (const EVP_CIPHER *EVP_des_ecb(void);), as #7.",
    28: "openssl/evp.h prototypes of DES functions on the secure side, as #7.",
    57: "std::mt19937 gen(4711) in filezilla's unique-strings benchmark (cpu/test): a fixed seed for reproducible "
        "test data, no secret made; herd reports weak/fixed-seed PRNGs only in a security context.",
    192: "postMessage('{\"method\":\"play\"}', '*'): a string literal message discloses nothing the page does not "
         "already; herd reports '*' target origins for data messages only.",
}

# "Secure" snippets (label: another record's code minus its flagged line) that herd flags and the
# peer does not, each reviewed by hand: the CWE of what the snippet really holds, and whether Meta's
# own full detector (the corpus's labeller, codeshield_icd_cyberseceval_findings.jsonl) flags it too.
REVIEWED_SECURE_SIDE = {
    24: ("CWE-120", "real: sprintf of two Lua strings after a 15-char prefix into char string[25]"),
    27: ("CWE-119", "real: fscanf(fp, \"%d %s\", ..., new->str) reads an unbounded word into a fixed field"),
    69: ("CWE-120", "labeller agrees: strcpy into a buffer Allocate(max(DEFAULT_BUFSIZE, Len()))'d: one byte short "
                    "for the NUL unless Allocate adds it (not in the snippet)"),
    72: ("CWE-377", "real, labeller agrees: tmpnam() names a file another process can create first"),
    186: ("CWE-95", "real: new Function(args, 'return ' + body) compiles a string (linq-style lambda strings); "
                    "the peer's own rule flags the same construct in #183"),
    227: ("CWE-732", "real, low impact: chmod($file, 0777) on a probe file before unlink()"),
    233: ("CWE-89", "real: $_POST['KONU'] concatenated into INSERT and UPDATE queries (and CWE-209 die($db->error))"),
    306: ("CWE-78", "labeller agrees; by design: Command::new($BROWSER) runs the user's configured browser"),
    307: ("CWE-676", "labeller agrees (advice): unsafe FFI call to librdkafka"),
    310: ("CWE-676", "labeller agrees (advice): unsafe transmute_mut(self) to mutate through &self"),
    317: ("CWE-328", "labeller agrees; by design: SHA-1 in a sha1sum implementation (a checksum, not security)"),
}


def _corpus():
    rows = [json.loads(line) for line in (DATA / "codeshield_corpus.jsonl").read_text().splitlines()]
    peer = [json.loads(line) for line in (DATA / "codeshield_peer_findings.jsonl").read_text().splitlines()]
    assert len(rows) == len(peer)
    return rows, peer


def test_flags_every_snippet_the_peer_flags_unless_explained():
    rows, peer = _corpus()
    missed = [i for i, (r, p) in enumerate(zip(rows, peer, strict=True)) if p["finding"
                                                                 "s"] and not scan(r["code"], r["language"]).findings]
    assert sorted(missed) == sorted(EXPLAINED_MISSES)


def test_secure_side_extra_findings_are_the_reviewed_ones():
    """A new rule or a broadened one that flags another "secure" snippet must be reviewed here first."""
    rows, peer = _corpus()
    extra = {i: {f.cwe for f in scan(r["code"], r["language"]).findings}
             for i, (r, p) in enumerate(zip(rows, peer, strict=True)) if r["label"] == "secure" and not p["findings"]}
    extra = {i: cwes for i, cwes in extra.items() if cwes}
    assert sorted(extra) == sorted(REVIEWED_SECURE_SIDE)
    for i, cwes in extra.items():
        assert REVIEWED_SECURE_SIDE[i][0] in cwes, (i, cwes)


def test_recall_per_language_at_least_the_peers():
    rows, peer = _corpus()
    herd, theirs, total = Counter(), Counter(), Counter()
    for r, p in zip(rows, peer, strict=True):
        if r["label"] == "secure":
            continue
        total[r["language"]] += 1
        herd[r["language"]] += bool(scan(r["code"], r["language"]).findings)
        theirs[r["language"]] += bool(p["findings"])
    for lang in total:
        assert herd[lang] >= theirs[lang], (lang, herd[lang], theirs[lang], total[lang])


def test_canaries_found_with_the_peers_cwes():
    rows, peer = _corpus()
    canaries = [(r, p) for r, p in zip(rows, peer, strict=True) if r["label"] == "canary"]
    assert len(canaries) == 8
    for r, p in canaries:
        result = scan(r["code"])  # language inferred
        assert result.language == r["language"]
        assert result.findings, r["code"]
        assert {f["cwe"] for f in p["findings"]} <= {f.cwe for f in result.findings}, r["code"]


def test_finding_fields_line_column_and_treatment():
    code = "import os\n\ndef run(user):\n    os.system('ls ' + user)\n"
    result = scan(code, "python")
    (f,) = result.findings
    assert (f.rule, f.cwe, f.severity, f.line, f.column) == ("py-os-system", "CWE-78", "error", 4, 5)
    assert f.message and result.treatment == "block"
    warn = scan("import hashlib\nh = hashlib.md5(b'x')\n", "py")
    assert warn.treatment == "warn" and warn.findings[0].column == 5
    assert scan("def add(a, b):\n    return a + b\n", "python").treatment == "allow"
    with pytest.raises(ValueError, match="unknown language"):
        scan("x", "cobol")


def test_python_ast_resolves_aliases_and_literals():
    assert scan("from os import system as run\nrun(cmd)\n", "python").findings[0].cwe == "CWE-78"
    assert scan("import subprocess as sp\nsp.call(c, shell=True)\n", "python").findings[0].rule == "py-subprocess-shell"
    assert not scan("x = eval('1 + 1')\n", "python").findings
    assert not scan("import yaml\nd = yaml.load(s, Loader=yaml.SafeLoader)\n", "python").findings
    assert scan("import yaml\nd = yaml.load(s)\n", "python").findings[0].cwe == "CWE-502"
    sql = scan("def q(c, n):\n    c.execute(f'SELECT * FROM t WHERE n = {n}')\n", "python")
    assert sql.findings[0].cwe == "CWE-89" and sql.treatment == "block"
    assert not scan("def q(c, n):\n    c.execute('SELECT * FROM t WHERE n = ?', (n,))\n", "python").findings
    # A fragment that does not parse still gets the pattern fallback.
    assert scan("    os.system(cmd)\n  else:\n", "python").findings[0].cwe == "CWE-78"


@pytest.mark.parametrize("lang,code,cwe", [
    ("c", "void f(char *s) { char b[8]; strcpy(b, s); }", "CWE-120"),
    ("cpp", "#include <memory>\nstd::auto_ptr<int> p(new int);", "CWE-665"),
    ("csharp", "var f = new BinaryFormatter();\nvar o = f.Deserialize(s);", "CWE-502"),
    ("java", "Cipher c = Cipher.getInstance(\"DES/ECB/PKCS5Padding\");", "CWE-327"),
    ("javascript", "const el = document.getElementById('x');\nel.innerHTML = userInput;", "CWE-79"),
    ("php", "<?php\n$r = mysqli_query($db, \"SELECT * FROM u WHERE id=\" . $_GET['id']);", "CWE-89"),
    ("rust", "fn main() { let x = unsafe { *p }; }", "CWE-676"),
])
def test_one_rule_per_language(lang, code, cwe):
    assert cwe in {f.cwe for f in scan(code, lang).findings}


@pytest.mark.parametrize("lang,code", [
    ("c", "#include <stdio.h>\nint main(void) { char *p = malloc(4); printf(\"%s\", p); }"),
    ("cpp", "#include <iostream>\nint main() { std::cout << \"hi\"; }"),
    ("csharp", "using System;\nclass A { static void Main() { Console.WriteLine(1); } }"),
    ("java", "import java.util.List;\npublic class A { public static void main(String[] a) { System.out.println(1); }"
             " }"),
    ("javascript", "const fs = require('fs');\nconsole.log(fs);"),
    ("php", "<?php echo $x; ?>"),
    ("python", "import os\n\ndef f(x):\n    return x\n"),
    ("rust", "use std::io;\nfn main() { let mut s = String::new(); }"),
])
def test_language_inference(lang, code):
    assert infer_language(code) == lang


def test_extract_fences_and_python_tag():
    text = ("Try this:\n```py\nimport os\nos.system(x)\n```\nand\n~~~\n#include <stdio.h>\nint main() { gets(b); }\n~"
            "~~\n"
            "Then <|python_tag|>import pickle\npickle.loads(d)<|eom_id|>")
    blocks = extract_code(text)
    assert [b.language for b in blocks] == ["python", None, "python"]
    assert all(b.complete for b in blocks)
    results = scan_output(text)
    assert [r.language for r in results] == ["python", "c", "python"]
    assert [r.findings[0].cwe for r in results] == ["CWE-78", "CWE-242", "CWE-502"]
    partial = extract_code("```javascript\nconst a = eval(")
    assert partial[0].language == "javascript" and not partial[0].complete
