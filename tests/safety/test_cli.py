"""``herd guard …`` commands through typer's test runner."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from herd.safety.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, as herd's app is
        pass

    register(app)
    return app


def test_guard_code_file_and_jsonl(tmp_path):
    runner = CliRunner()
    src = tmp_path / "a.c"
    src.write_text("#include <stdio.h>\nint main() { char b[8]; gets(b); }\n")
    r = runner.invoke(_app(), ["guard", "code", str(src)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["treatment"] == "block" and out["language"] == "c"
    assert out["findings"][0]["cwe"] == "CWE-242" and out["findings"][0]["line"] == 2

    jl = tmp_path / "in.jsonl"
    jl.write_text(json.dumps({"code": "import hashlib\nhashlib.sha1(b'')\n", "language": "python"}) + "\n"
                  + json.dumps({"code": "fn main() { println!(\"hi\"); }"}) + "\n")
    r = runner.invoke(_app(), ["guard", "code", "--jsonl", str(jl)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["treatment"] for x in lines] == ["warn", "allow"]
    assert lines[0]["findings"][0]["rule"] == "py-weak-hash"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"language": "c"}\n')
    r = runner.invoke(_app(), ["guard", "code", "--jsonl", str(bad)])
    assert r.exit_code == 2 and "bad.jsonl:1" in r.output


def test_guard_code_model_output(tmp_path):
    f = tmp_path / "answer.md"
    f.write_text("Sure:\n```php\n<?php\nsystem($_GET['c']);\n```\n")
    r = CliRunner().invoke(_app(), ["guard", "code", "--output", str(f)])
    out = json.loads(r.stdout)
    assert out["treatment"] == "block" and out["blocks"][0]["language"] == "php"


def test_guard_llama_guard_show_prompt():
    r = CliRunner().invoke(_app(), ["guard", "llama-guard", "unused", "-m", "hi", "-m", "hello", "--version", "1b",
                                    "--exclude", "S6", "--show-prompt"])
    assert r.exit_code == 0, r.output
    assert "ONLY THE LAST Agent message" in r.stdout and "S6:" not in r.stdout and "S13: Elections." in r.stdout
