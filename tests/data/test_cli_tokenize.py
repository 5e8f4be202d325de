"""`herd tokenize`: a thin layer over tokenize_corpus."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from herd.cli import app
from herd.data import open_shards
from herd.tokenizer import Tokenizer

runner = CliRunner()


def test_tokenize_command(tmp_path, llama3_tokenizer_path):
    texts = [f"document number {i} " * (i + 1) for i in range(20)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = ["tokenize", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out"), "-t", str(llama3_tokenizer_path),
            "--source", "demo", "--shard-tokens", "200", "--workers", "1", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_documents"] == 20 and len(summary["shards"]) > 1
    tok = Tokenizer.load(llama3_tokenizer_path)
    docs = [s.document(i).tolist() for s in open_shards(summary["shards"]) for i in range(s.n_documents)]
    assert docs == [tok.encode(t, bos=True, eos=True) for t in texts]

    again = runner.invoke(app, args)  # the shards exist: refused, with a clear message and exit code 2
    assert again.exit_code == 2 and "overwrite" in again.output


def test_tokenize_command_bad_record(tmp_path, llama3_tokenizer_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n{"txt": "wrong field"}\n')
    result = runner.invoke(app, ["tokenize", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out"),
                                 "-t", str(llama3_tokenizer_path), "--workers", "1"])
    message = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "in.jsonl:2: no field 'text'" in message
