"""`herd …`: a thin command-line layer over herd's Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="herd: the Llama 3 system, end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ModelDir = Annotated[Path, typer.Option("--model", "-m", help="Model directory (HF or Meta layout).")]
Dtype = Annotated[
    str | None, typer.Option(help="Weights dtype: float32, bfloat16, float16 (default: the checkpoint's).")
]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, …")]


def _stdout() -> Console:
    """Console for tables on stdout; wide when piped, so columns are never folded."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


def _load(model_dir: Path, dtype: str | None, device: str):
    """Model and tokenizer, with a progress indicator while the weights load."""
    from herd.checkpoint import CheckpointError, load_any
    from herd.tokenizer import Tokenizer

    if not model_dir.exists():
        raise _fail(f"model directory {model_dir} does not exist")
    try:
        with console.status(f"Loading weights from {model_dir} …"):
            model = load_any(model_dir, dtype=dtype, device=device)
            tokenizer = Tokenizer.from_dir(model_dir)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    console.print(
        f"[dim]{model.num_params() / 1e9:.2f}B parameters, "
        f"{next(model.parameters()).dtype}, {device}, context {model.args.max_seq_len}[/]"
    )
    return model, tokenizer


def _sampling(max_new_tokens: int, temperature: float, top_p: float, seed: int | None, **extra):
    from herd.generation import SamplingParams

    try:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              seed=seed, **extra)
    except ValueError as e:
        raise _fail(str(e)) from None


@app.command()
def generate(
    model: ModelDir,
    prompt: Annotated[str, typer.Option(help="Prompt text (encoded with <|begin_of_text|>).")],
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.9,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    dtype: Dtype = None,
    device: Device = "cpu",
) -> None:
    """Continue a raw text prompt (no chat format)."""
    from herd.generation import Generator

    params = _sampling(max_new_tokens, temperature, top_p, seed)
    net, tokenizer = _load(model, dtype, device)
    generator = Generator(net, tokenizer)
    prompt_ids = tokenizer.encode(prompt, bos=True)
    try:
        if json_output:
            out = generator.generate([prompt_ids], params)[0]
            print(json.dumps({
                "text": out.text,
                "token_ids": out.token_ids,
                "prompt_tokens": len(prompt_ids),
                "finish_reason": out.finish_reason,
            }, ensure_ascii=False))
            return
        stream = generator.stream(prompt_ids, params)
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except ValueError as e:
        raise _fail(str(e)) from None


CHAT_HELP = """Commands:
  /system TEXT   set the system prompt (clears the dialog)
  /clear         forget the dialog
  /history       show the dialog so far
  /exit, /bye    leave (or Ctrl-D)
  \"\"\"          start and end a multi-line message"""


def _read_message(prompt: str = ">>> ") -> str | None:
    """One user message; a line of three double quotes opens and closes a multi-line one."""
    try:
        line = input(prompt)
    except EOFError:
        return None
    if line.strip().startswith('"""'):
        first = line.strip()[3:]
        lines = [first] if first else []
        if first.endswith('"""'):
            return first[:-3]
        while True:
            try:
                more = input("... ")
            except EOFError:
                break
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                break
            lines.append(more)
        return "\n".join(lines)
    return line


def _enable_history() -> None:
    try:
        import atexit
        import readline
    except ImportError:  # pragma: no cover - no readline on this platform
        return
    path = Path.home() / ".herd_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    atexit.register(lambda: _save_history(readline, path))


def _save_history(readline, path: Path) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass


@app.command()
def chat(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory (HF or Meta layout).")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per reply.")] = 1024,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.9,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    dtype: Dtype = None,
    device: Device = "cpu",
) -> None:
    """Interactive streaming chat with an instruct model (like `ollama run`)."""
    from herd.chat import ChatSession
    from herd.generation import Generator

    if model is None:
        raise _fail("herd ships no default model yet: pass --model DIR (a Llama 3.x Instruct "
                    "checkpoint in HF or Meta layout)")
    params = _sampling(max_new_tokens, temperature, top_p, seed)
    net, tokenizer = _load(model, dtype, device)
    session = ChatSession(Generator(net, tokenizer), params, system=system)
    interactive = sys.stdin.isatty()
    if interactive:
        _enable_history()
        console.print(f"[dim]Type a message; /? for help. Context {net.args.max_seq_len} tokens.[/]")
    while True:
        text = _read_message(">>> " if interactive else "")
        if text is None:
            break
        stripped = text.strip()
        if not stripped:
            continue
        if stripped in ("/exit", "/bye", "/quit"):
            break
        if stripped in ("/?", "/help"):
            console.print(CHAT_HELP)
            continue
        if stripped == "/clear":
            session.clear()
            console.print("[dim]dialog cleared[/]")
            continue
        if stripped == "/history":
            for m in session.dialog():
                console.print(f"[bold]{m.role}[/]: {m.content}")
            continue
        if stripped.startswith("/system"):
            session.system = stripped[len("/system"):].strip() or None
            session.clear()
            console.print("[dim]system prompt set; dialog cleared[/]")
            continue
        if stripped.startswith("/"):
            console.print(f"[red]unknown command {stripped.split()[0]}[/]; /? for help")
            continue
        try:
            for delta in session.send(text):
                sys.stdout.write(delta)
                sys.stdout.flush()
        except KeyboardInterrupt:
            console.print("\n[dim]interrupted[/]")
            continue
        except ValueError as e:  # e.g. the dialog no longer fits the context
            console.print(f"\n[bold red]error:[/] {e}")
            continue
        sys.stdout.write("\n")
        reply = session.last_reply
        if reply is not None and reply.tool_calls:
            for call in reply.tool_calls:
                console.print(f"[cyan]tool call[/] {call.tool_name}({json.dumps(call.arguments)})")
        sys.stdout.flush()


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help="Model directory.")],
            json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show a checkpoint's config, parameter count, dtype, size on disk and tokenizer."""
    from herd.checkpoint import CheckpointError, inspect_checkpoint

    try:
        info = inspect_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    if json_output:
        print(json.dumps(info, indent=2, default=str))
        return
    table = Table(title=str(path), show_header=False)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, str(value))
    _stdout().print(table)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Meta-layout directory (params.json + consolidated.*.pth).")],
    dst: Annotated[Path, typer.Argument(help="Output directory (HF layout, herd's native format).")],
    rope_scaling_factor: Annotated[float | None, typer.Option(
        help="RoPE scaling factor when params.json says use_scaled_rope (default: from the matching preset).")] = None,
    dtype: Dtype = None,
) -> None:
    """Convert a Meta checkpoint to the native (Hugging Face) layout."""
    from herd.checkpoint import CheckpointError, convert_meta_to_hf

    try:
        with console.status(f"Converting {src} → {dst} …"):
            report = convert_meta_to_hf(src, dst, rope_scaling_factor=rope_scaling_factor, dtype=dtype)
    except (CheckpointError, FileNotFoundError, FileExistsError) as e:
        raise _fail(str(e)) from None
    if report:
        console.print(report)
    console.print(f"[green]wrote[/] {dst}")


@app.command()
def presets() -> None:
    """List the named model presets and their sizes."""
    from herd.model import PRESETS

    table = Table("preset", "params", "dim", "layers", "heads", "kv heads", "ffn", "context", "rope factor", "tied")
    for name, a in PRESETS.items():
        table.add_row(name, f"{a.num_params() / 1e9:.3f}B", str(a.dim), str(a.n_layers), str(a.n_heads),
                      str(a.n_kv_heads), str(a.ffn_dim), str(a.max_seq_len),
                      str(a.rope_scaling.factor) if a.rope_scaling else "-", "yes" if a.tie_word_embeddings else "")
    _stdout().print(table)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
