"""`herd …`: a thin command-line layer over herd's Python API."""

from __future__ import annotations

import importlib
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


def _count(n: int) -> str:
    """7.02M, 1.24B: a parameter count a reader takes in at a glance."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _fail(message: str) -> typer.Exit:
    from rich.markup import escape

    # soft_wrap: a long path in the message is never broken across lines
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
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
        f"[dim]{_count(model.num_params())} parameters, "
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
    prompt: Annotated[str, typer.Option(help="Prompt text (encoded with <|begin_of_text|>).")],
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Model directory (HF or Meta layout); default: herd's bundled base model.")] = None,
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
    if model is None:
        from herd.bundled import base_model_dir

        try:
            model = base_model_dir()
        except FileNotFoundError as e:
            raise _fail(str(e)) from None
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
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory (HF or Meta layout); default: "
                                               "herd's bundled chat model.")] = None,
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
        from herd.bundled import chat_model_dir

        try:
            model = chat_model_dir()
        except FileNotFoundError as e:
            raise _fail(str(e)) from None
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


tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="JSONL (a text field) or .txt files.")],
    vocab_size: Annotated[int, typer.Option(help="BPE ranks, the 256 bytes included (specials come after).")],
    out: Annotated[Path, typer.Option(help="Directory for tokenizer.model, tokenizer.json, compression.json.")],
    text_field: Annotated[str, typer.Option(help="JSONL field with the text (dotted for nesting).")] = "text",
    lang_field: Annotated[str | None, typer.Option(
        help="JSONL field naming the language for the report, e.g. meta.language (.txt: the file stem).")] = None,
    holdout: Annotated[float, typer.Option(help="Fraction of input records held out for the report.")] = 0.0,
    eval_files: Annotated[list[Path] | None, typer.Option("--eval", help="Held-out files for the report.")] = None,
    compare: Annotated[Path | None, typer.Option(
        help="Another tokenizer.model to compare compression with (e.g. Llama 3's).")] = None,
) -> None:
    """Train a byte-level BPE vocabulary with Llama 3's pre-tokenizer and special tokens."""
    from herd.tokenizer import TokenizerFileError
    from herd.tokenizer.train_bpe import train_from_files

    try:
        with console.status(f"Training a {vocab_size}-token BPE vocabulary …"):
            report = train_from_files(inputs, vocab_size, out, text_field=text_field, lang_field=lang_field,
                                      holdout=holdout, eval_paths=eval_files or (), compare=compare)
    except (ValueError, TypeError, FileNotFoundError, TokenizerFileError, ImportError) as e:
        raise _fail(str(e)) from None
    console.print(f"[green]wrote[/] {out} ({report['vocab_size']} ranks + 256 special tokens)")
    if report["compression"]:
        table = Table("language", "tokenizer", "chars", "tokens", "chars/token", "bytes/token",
                      title="compression on held-out text")
        for lang, row in report["compression"].items():
            for name, c in row.items():
                table.add_row(lang, name, str(c["chars"]), str(c["tokens"]), f"{c['chars_per_token']:.3f}",
                              f"{c['bytes_per_token']:.3f}")
        _stdout().print(table)


@app.command()
def tokenize(
    inputs: Annotated[list[Path], typer.Argument(help="JSONL (.gz/.zst) or .txt files, or directories of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for the shards.")],
    tokenizer: Annotated[Path, typer.Option("--tokenizer", "-t",
                                            help="tokenizer.model / tokenizer.json, or a model directory.")],
    source: Annotated[str | None, typer.Option(help="Source name (shard prefix); default: the output dir's name.")]
    = None,
    text_field: Annotated[str, typer.Option(help="JSONL field holding the text.")] = "text",
    shard_tokens: Annotated[int, typer.Option(help="Start a new shard after this many tokens.")] = 1 << 28,
    workers: Annotated[int | None, typer.Option(help="Encoding processes (default: every core).")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Count and skip bad records instead of failing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing shards of this source.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Tokenize a corpus into token shards (.bin + .idx + .json) for training."""
    from herd.data import CorpusError, tokenize_corpus
    from herd.tokenizer import Tokenizer
    from herd.tokenizer.tokenizer import TokenizerFileError

    try:
        tok = Tokenizer.load(tokenizer)
        summary = tokenize_corpus(inputs, out, tok, text_field=text_field, source=source,
                                  shard_tokens=shard_tokens, workers=workers, skip_bad=skip_bad,
                                  overwrite=overwrite, progress=sys.stderr.isatty())
    except (CorpusError, TokenizerFileError, FileExistsError, ValueError) as e:
        raise _fail(str(e)) from None
    if json_output:
        print(json.dumps(summary.as_dict(), indent=2))
        return
    table = Table(title=f"tokenized {summary.source} → {out}", show_header=False)
    for key, value in summary.as_dict().items():
        if key == "shards":
            value = f"{len(value)} ({value[0]} …)" if len(value) > 1 else ", ".join(value) or "none"
        elif key == "bad_examples":
            value = "\n".join(value) or "-"
        table.add_row(key, str(value))
    _stdout().print(table)


def _model_args(preset: str | None, model: Path | None):
    """ModelArgs from a preset name or a model directory's config.json."""
    from herd.model import ModelArgs

    if (preset is None) == (model is None):
        raise _fail("give exactly one of --preset NAME or --model DIR")
    if preset is not None:
        try:
            return ModelArgs.from_name(preset)
        except KeyError as e:
            raise _fail(str(e.args[0])) from None
    from herd.checkpoint import CheckpointError
    from herd.checkpoint.config import args_from_hf_config, read_json

    try:
        return args_from_hf_config(read_json(model / "config.json"), str(model / "config.json"))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None


@app.command()
def memory(
    config: Annotated[Path | None, typer.Option(
        help="A training run config (TOML): model, rows, seq_len, dtype, checkpointing from it; --dp is the "
        "world size, --device where it runs.")] = None,
    device: Annotated[str, typer.Option(help="With --config: cuda or cpu (the trainer's dtype and attention "
                                        "choices differ).")] = "cuda",
    preset: Annotated[str | None, typer.Option(help="Model preset (see `herd presets`).")] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory with config.json.")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per row.")] = 8192,
    micro_batch: Annotated[int, typer.Option(help="Rows per forward/backward on one rank.")] = 1,
    dp: Annotated[int, typer.Option(help="Data-parallel ranks the states are sharded over (FSDP).")] = 1,
    tp: Annotated[int, typer.Option(help="Tensor-parallel degree.")] = 1,
    dtype: Annotated[str, typer.Option(help="Compute dtype: bfloat16, float16, float32.")] = "bfloat16",
    master_fp32: Annotated[bool, typer.Option(help="Keep fp32 master weights, gradients, optimizer state.")] = True,
    autocast: Annotated[bool, typer.Option(help="fp32 weights under torch.autocast (herd's 1-device trainer).")
                        ] = False,
    optimizer: Annotated[str, typer.Option(help="adamw, sgd or none.")] = "adamw",
    checkpointing: Annotated[bool, typer.Option(help="Activation checkpointing of every block.")] = False,
    ce_chunk: Annotated[int | None, typer.Option(help="Tokens per chunked cross-entropy chunk (default: full).")
                        ] = None,
    attention: Annotated[str, typer.Option(help="flash (SDPA/flex kernels) or dense_mask (CPU document mask).")
                         ] = "flash",
    device_memory: Annotated[str | None, typer.Option(help="Device memory to check against, e.g. 80GB, 80GiB.")
                             ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON (bytes).")] = False,
) -> None:
    """Estimate the memory one rank needs to train a model."""
    from herd.train.memory import check_fits, estimate_for_config, estimate_memory, parse_bytes

    if config is not None:
        from herd.model import ModelArgs
        from herd.train import ConfigError, load_config

        if preset is not None or model is not None:
            raise _fail("--config names the model: leave out --preset and --model")
        try:
            cfg = load_config(config)
            args = ModelArgs.from_name(cfg.model.preset, **cfg.model.overrides)
            est = estimate_for_config(cfg, world_size=dp, device=device)
            device_bytes = parse_bytes(device_memory) if device_memory else None
        except (ConfigError, KeyError, ValueError) as e:
            raise _fail(str(e)) from None
        _print_memory(args, est, device_bytes, json_output, check_fits)
        return
    args = _model_args(preset, model)
    try:
        est = estimate_memory(args, seq_len=seq_len, micro_batch_rows=micro_batch, dp=dp, tp=tp, param_dtype=dtype,
                              master_fp32=master_fp32, autocast=autocast, optimizer=optimizer,  # type: ignore[arg-type]
                              activation_checkpointing=checkpointing, chunked_ce_chunk=ce_chunk,
                              attention=attention)  # type: ignore[arg-type]
        device_bytes = parse_bytes(device_memory) if device_memory else None
    except ValueError as e:
        raise _fail(str(e)) from None
    _print_memory(args, est, device_bytes, json_output, check_fits)


def _print_memory(args, est, device_bytes: int | None, json_output: bool, check_fits) -> None:
    warning = check_fits(est, device_bytes) if device_bytes else None
    if json_output:
        print(json.dumps({**est.to_dict(), "device_bytes": device_bytes, "warning": warning}))
        return
    print(f"{_count(args.num_params())} parameters, {est.tokens_per_rank} tokens per rank\n{est.table()}")
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}")
    elif device_bytes:
        console.print(f"[green]fits[/] in {device_bytes / 2**30:.1f} GiB")


@app.command(context_settings={"allow_extra_args": False})
def pretrain(
    config: Annotated[Path, typer.Argument(help="Run config (TOML), e.g. configs/pretrain-tiny.toml.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. optim.lr=1e-3")
    ] = None,
) -> None:
    """Pre-train (or resume) as the config says; under torchrun, sharded with FSDP2."""
    import logging

    from herd.train import ConfigError, TrainingFault, load_config
    from herd.train import pretrain as run_pretrain

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as e:
        raise _fail(str(e)) from None
    try:
        result = run_pretrain(cfg)
    except (ConfigError, TrainingFault, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    _report_run(result, "step")


def _report_run(result, label: str) -> None:
    """The end of a training run: where it stopped, its last loss, run directory and model."""
    if result.stopped_by_signal:
        console.print(f"stopped by a signal at step {result.step}; checkpoint {result.checkpoint}")
        raise typer.Exit(code=0)
    loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
    console.print(f"{label} {result.step}: loss {loss}; run directory {result.run_dir}"
                  + (f"; model {result.export_dir}" if result.export_dir else ""))


@app.command()
def plot(
    run_dir: Annotated[Path, typer.Argument(help="A pretrain run directory (holding metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG path (default RUN_DIR/curves.png).")] = None,
) -> None:
    """Loss and learning-rate curves of a run, as a PNG."""
    from herd.train.plot import plot_run

    try:
        path = plot_run(run_dir, out)
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    except ImportError:
        raise _fail("herd plot needs matplotlib: pip install 'herd[plot]'") from None
    typer.echo(str(path))


@app.command()
def scaling(
    runs: Annotated[Path, typer.Option(help="JSON Lines of finished runs: {compute, params, tokens, loss}.")],
    out: Annotated[Path, typer.Option(help="Directory for fit.json and isoflop.png.")],
    predict: Annotated[list[float] | None, typer.Option(help="Compute budgets (FLOPs) to predict for.")] = None,
) -> None:
    """Fit IsoFLOP curves and the compute-optimal scaling law to finished runs."""
    from herd.tokenizer.hf_files import atomic_write
    from herd.train.scaling import fit_isoflop, plot_isoflop, read_runs

    try:
        fit = fit_isoflop(read_runs(runs))
    except (ValueError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    result = fit.to_dict()
    result["predictions"] = [
        {"compute": c, "tokens": fit.optimal_tokens(c), "params": fit.optimal_params(c), "loss": fit.predict_loss(c)}
        for c in predict or []
    ]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "fit.json", json.dumps(result, indent=2) + "\n")
    plot_isoflop(fit, out / "isoflop.png")
    table = Table("compute (FLOPs)", "D* tokens", "N* params", "L*", title="IsoFLOP minima (* = predicted)")
    for m in fit.minima:
        table.add_row(f"{m.compute_flops:.3g}", f"{m.tokens:.3g}", f"{m.params:.3g}", f"{m.loss:.4f}")
    for p in result["predictions"]:
        table.add_row(f"{p['compute']:.3g}*", f"{p['tokens']:.3g}", f"{p['params']:.3g}", f"{p['loss']:.4f}")
    _stdout().print(table)
    print(f"D* = {fit.A:.4g} * C^{fit.alpha:.4f} (alpha), L* = {fit.loss_E:.4g} + {fit.loss_B:.4g} * "
          f"C^-{fit.loss_beta:.4f}")
    console.print(f"[green]wrote[/] {out / 'fit.json'}, {out / 'isoflop.png'}")


# Each area beyond the core keeps its commands in its own package: a module here defines
# ``register(app: typer.Typer) -> None`` and keeps its heavy imports inside the commands.
AREA_COMMANDS: tuple[str, ...] = (
    "herd.data.cli",
    "herd.quant.cli",
    "herd.engine.cli",
    "herd.safety.cli",
    "herd.posttrain.cli",
)
for _module in AREA_COMMANDS:
    importlib.import_module(_module).register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
