"""The `herd` command line, end to end on a tiny random model with the real tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from herd.cli import app
from tests.conftest import make_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, llama3_tokenizer_path):
    from herd.checkpoint import save_pretrained
    from herd.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(make_tiny_model("tiny", seed=7), path, tokenizer=Tokenizer.from_file(llama3_tokenizer_path))
    return path


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("generate", "chat", "inspect", "convert", "presets"):
        assert command in result.output


def test_generate_json_matches_transformers_greedy(model_dir, llama3_tokenizer_path):
    transformers = pytest.importorskip("transformers")
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    prompt = "The quick brown fox"
    result = runner.invoke(app, ["generate", "--model", str(model_dir), "--prompt", prompt,
                                 "--temperature", "0", "--max-new-tokens", "12", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) >= {"text", "token_ids"}

    ids = MetaTokenizer(llama3_tokenizer_path).encode(prompt, bos=True, eos=False)
    assert out["prompt_tokens"] == len(ids)
    hf = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stop = [128001, 128008, 128009]
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=stop,
                      pad_token_id=128004)[0, len(ids):].tolist()
    ref = ref[: next((i for i, t in enumerate(ref) if t in stop), len(ref))]
    assert out["token_ids"] == ref
    assert out["text"] == MetaTokenizer(llama3_tokenizer_path).decode(ref)


def test_generate_streams_text_without_json(model_dir):
    result = runner.invoke(app, ["generate", "--model", str(model_dir), "--prompt", "Hi",
                                 "--max-new-tokens", "4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n")


def test_bad_input_gets_a_clear_error(model_dir, tmp_path):
    missing = tmp_path / "nope"
    result = runner.invoke(app, ["generate", "--model", str(missing), "--prompt", "x"])
    assert result.exit_code == 2 and str(missing) in result.stderr

    result = runner.invoke(app, ["generate", "--model", str(model_dir), "--prompt", "x", "--top-p", "1.5"])
    assert result.exit_code == 2 and "top_p" in result.stderr

    long_prompt = "word " * 3000  # the tiny model's context is 2048 tokens
    result = runner.invoke(app, ["generate", "--model", str(model_dir), "--prompt", long_prompt])
    assert result.exit_code == 2 and "context" in result.stderr

    result = runner.invoke(app, ["chat", "--model", str(missing)])  # without --model: the bundled chat model
    assert result.exit_code == 2 and str(missing) in result.stderr

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    result = runner.invoke(app, ["inspect", str(tmp_path / "broken")])
    assert result.exit_code == 2 and "config.json" in result.stderr


def test_chat_reads_commands_and_messages(model_dir):
    script = "\n".join([
        "Hello there",
        '"""',
        "a message",
        "on two lines",
        '"""',
        "/history",
        "/system Be brief.",
        "/history",
        "/bogus",
        "/exit",
        "never read",
    ]) + "\n"
    result = runner.invoke(app, ["chat", "--model", str(model_dir), "--max-new-tokens", "3",
                                 "--temperature", "0"], input=script)
    assert result.exit_code == 0, result.output
    err = result.stderr
    # The first /history shows both turns and the multi-line message intact.
    assert "user: Hello there" in err
    assert "user: a message\non two lines" in err
    assert err.count("assistant:") == 2
    # /system cleared the dialog: the second /history shows only the system prompt.
    after = err.split("system prompt set")[1]
    assert "system: Be brief." in after and "user:" not in after
    assert "unknown command /bogus" in err


def test_chat_session_keeps_history_and_rolls_back_a_failed_turn(model_dir):
    from herd.chat import ChatSession
    from herd.generation import SamplingParams

    session = ChatSession.load(model_dir, params=SamplingParams(temperature=0, max_new_tokens=4))
    text = "".join(session.send("Hi"))
    assert [m.role for m in session.history] == ["user", "assistant"]
    assert session.history[1].content == text
    with pytest.raises(ValueError, match="context"):
        list(session.send("word " * 3000))
    assert [m.role for m in session.history] == ["user", "assistant"]


def test_inspect_reports_the_checkpoint(model_dir):
    result = runner.invoke(app, ["inspect", str(model_dir), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "hf"
    assert info["num_params"] == make_tiny_model("tiny").num_params()
    assert info["tokenizer"]["vocab_size"] == 128256


def test_convert_meta_to_native(tmp_path):
    from herd.checkpoint import load_pretrained, save_meta
    from herd.model import RopeScaling

    # params.json records only use_scaled_rope: the factor comes from the command line
    # (the rest of the scaling from the preset whose shape matches: "tiny").
    scaling = RopeScaling(factor=16.0, original_max_position_embeddings=256)
    model = make_tiny_model("tiny", seed=3, rope_scaling=scaling)
    save_meta(model, tmp_path / "meta", model_parallel=2)
    out = tmp_path / "native"
    result = runner.invoke(app, ["convert", str(tmp_path / "meta"), str(out), "--rope-scaling-factor", "16"])
    assert result.exit_code == 0, result.output
    loaded = load_pretrained(out)
    assert loaded.args.rope_scaling == scaling
    tokens = torch.randint(0, 128256, (1, 300))
    with torch.no_grad():
        assert (loaded(tokens) - model(tokens)).abs().max() < 1e-5


def test_presets_table():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    assert "llama3.1-405b" in result.stdout and "405.853B" in result.stdout
