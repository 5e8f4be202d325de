"""``herd guard …``: Code Shield, Prompt Guard, Llama Guard and the insecure-code benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

guard_app = typer.Typer(help="Safety tools: Code Shield, Prompt Guard, Llama Guard 3, insecure-code benchmark.",
                        no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(guard_app, name="guard")


def _fail(message: str) -> typer.Exit:
    """An error line on stderr (as herd.cli's ``_fail``), exit status 2."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


@guard_app.command("code")
def code_cmd(
    file: Annotated[Path | None, typer.Argument(help="Source file to scan (or - for stdin).")] = None,
    language: Annotated[str | None, typer.Option("--language", "-l", help="c, cpp, csharp, java, javascript, "
                                                 "php, python, rust (default: inferred).")] = None,
    jsonl: Annotated[Path | None, typer.Option("--jsonl", help="JSON Lines of {\"code\", \"language\"?}: one "
                                               "JSON result per line on stdout.")] = None,
    output: Annotated[bool, typer.Option("--output", help="FILE is model output: scan its fenced blocks and "
                                         "python_tag calls.")] = False,
) -> None:
    """Scan code for insecure patterns; prints the result as JSON (treatment, findings)."""
    from herd.safety.code_shield import scan, scan_output
    from herd.safety.code_shield.findings import treatment_of

    if (file is None) == (jsonl is None):
        raise _fail("give either FILE or --jsonl IN.jsonl")
    if jsonl is not None:
        if not jsonl.exists():
            raise _fail(f"{jsonl} does not exist")
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                code = rec["code"]
                result = scan(code, rec.get("language") or language)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise _fail(f"{jsonl}:{n}: {e.__class__.__name__}: {e} (records are {{\"code\", \"language\"?}})") \
                    from None
            print(json.dumps(result.to_dict()), flush=True)
        return
    if str(file) == "-":
        text = sys.stdin.read()
    elif not file.exists():
        raise _fail(f"{file} does not exist")
    else:
        text = file.read_text(encoding="utf-8", errors="replace")
    try:
        if output:
            results = scan_output(text)
            findings = [f for r in results for f in r.findings]
            print(json.dumps({"treatment": treatment_of(findings), "blocks": [r.to_dict() for r in results]}))
        else:
            print(json.dumps(scan(text, language).to_dict()))
    except ValueError as e:
        raise _fail(str(e)) from None


@guard_app.command("train-prompt")
def train_prompt_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the trained classifier.")],
    data: Annotated[Path | None, typer.Option(help="JSON Lines {text, label, source, language?} "
                                              "(default: herd's data).")] = None,
    holdout: Annotated[str, typer.Option(help="Source held out from training and evaluated on.")] =
        "cyberseceval-multilingual",
    epochs: Annotated[int, typer.Option(min=1)] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score threshold for the report.")] = 0.5,
    mix_languages: Annotated[int, typer.Option(min=0, help="Copies of each English record of an attack source "
                                               "wrapped in another language's benign lines (0: none).")] = 3,
) -> None:
    """Train herd's Prompt Guard classifier; report precision/recall on the held-out source."""
    from herd.safety.prompt_data import DATA, load_records
    from herd.safety.prompt_guard import PromptGuard, train_classifier
    from herd.safety.prompt_metrics import evaluate

    try:
        records = load_records(data or DATA)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    train = [r for r in records if r.get("source") != holdout]
    test = [r for r in records if r.get("source") == holdout]
    if not test:
        sources = sorted({r.get("source") for r in records})
        raise _fail(f"no records from held-out source {holdout!r}; sources are {sources}")
    print(f"training on {len(train)} records, holding out {len(test)} from {holdout!r}", file=sys.stderr)
    try:
        model = train_classifier(train, epochs=epochs, seed=seed, mix_languages=mix_languages,
                                 log=lambda m: print(m, file=sys.stderr))
    except ImportError as e:
        raise _fail(str(e)) from None
    model.save(out)
    report = evaluate(PromptGuard.from_classifier(model), test, threshold)
    report.update({"holdout": holdout, "train_records": len(train), "model": str(out)})
    print(json.dumps(report, indent=2))


@guard_app.command("prompt")
def prompt_cmd(
    text: Annotated[str | None, typer.Argument(help="Text to score (or use --file).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f")] = None,
    model: Annotated[Path | None, typer.Option(help="herd classifier dir (from train-prompt).")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Meta Prompt-Guard-86M dir (needs herd[safety]).")] = None,
    temperature: Annotated[float, typer.Option(min=0.01)] = 1.0,
) -> None:
    """Jailbreak and indirect-injection scores of a text (max over 512-token windows)."""
    from herd.safety.prompt_guard import PromptGuard

    if (model is None) == (checkpoint is None):
        raise _fail("give one of --model (herd classifier) or --checkpoint (Prompt-Guard-86M)")
    if (text is None) == (file is None):
        raise _fail("give TEXT or --file")
    try:
        content = text if text is not None else file.read_text(encoding="utf-8")
        guard = PromptGuard.herd(model, temperature=temperature) if model else \
            PromptGuard.from_pretrained(checkpoint, temperature=temperature)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise _fail(str(e)) from None
    print(json.dumps(guard.score(content).to_dict()))


@guard_app.command("llama-guard")
def llama_guard_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Llama Guard 3 checkpoint (HF or Meta layout).")],
    message: Annotated[list[str], typer.Option("--message", "-m", help="Conversation turns, user first, "
                                               "alternating user/assistant.")],
    version: Annotated[str, typer.Option(help="8b (S1-S14) or 1b (S1-S13).")] = "8b",
    exclude: Annotated[list[str], typer.Option(help="Category keys to leave out, e.g. S6.")] = [],  # noqa: B006
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.5,
    show_prompt: Annotated[bool, typer.Option(help="Print the prompt and exit.")] = False,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Classify a conversation with Llama Guard 3; prints the verdict as JSON."""
    from herd.safety.llama_guard import LlamaGuard, render_prompt

    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": m} for i, m in enumerate(message)]
    try:
        if show_prompt:
            print(render_prompt(messages, version=version, excluded_category_keys=exclude))
            return
        from herd.cli import _load

        model, tokenizer = _load(model_dir, None, device)
        guard = LlamaGuard(model, tokenizer, version=version, excluded_category_keys=exclude, threshold=threshold)
        print(json.dumps(guard.classify(messages).to_dict()))
    except ValueError as e:
        raise _fail(str(e)) from None


@guard_app.command("bench-code")
def bench_code_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model checkpoint to generate code with.")],
    prompts: Annotated[Path, typer.Option(help="JSON Lines {prompt, language} or CyberSecEval instruct.json.")],
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    language: Annotated[list[str], typer.Option(help="Only these languages.")] = [],  # noqa: B006
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 512,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Generate code for each prompt, scan it, report the insecure rate per language and CWE."""
    from herd.cli import _load
    from herd.generation import Generator, SamplingParams
    from herd.safety.bench_code import load_prompts, run_bench

    try:
        items = load_prompts(prompts, limit, language)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as e:
        raise _fail(str(e)) from None
    model, tokenizer = _load(model_dir, None, device)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    report = run_bench(Generator(model, tokenizer), items, params, batch_size)
    report.pop("answers")
    print(json.dumps(report, indent=2))
