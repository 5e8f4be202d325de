"""`herd curate …`: run a curation config, train/apply the quality classifier, label with a model, mix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

curate_app = typer.Typer(help="Data curation: raw text → filtered, deduplicated, scored, mixed corpus.",
                         no_args_is_help=True)


def _cli():
    from herd import cli

    return cli


@curate_app.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Curation config (TOML).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. curate.workers=4")] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete the work directory's previous run first.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    executor: Annotated[str, typer.Option(help="herd (its own one-machine runner), or datatrove's local, slurm "
                                               "or ray executor (options: the config's scale_out table).")]
    = "herd",
    tasks: Annotated[int | None, typer.Option(help="datatrove: tasks per phase (default: one per input file).")]
    = None,
    workers: Annotated[int | None, typer.Option(help="datatrove local executor: tasks run at once.")] = None,
    logging_dir: Annotated[Path | None, typer.Option(help="datatrove: logs, stats and completion markers.")] = None,
) -> None:
    """Run (or resume) a curation pipeline; writes work_dir/output/*.jsonl.gz and work_dir/report.json.

    With --executor local|slurm|ray the same config runs as datatrove pipelines (herd.data.scale_out):
    output in work_dir/datatrove/output, per-stage stats in the logging directory.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from herd.data.config import load_config
    from herd.data.records import CurateError
    from herd.data.report import report_tables

    cli = _cli()
    try:
        pipeline = load_config(config, overrides or [])
    except CurateError as e:
        raise cli._fail(str(e)) from None
    if executor != "herd":
        _run_datatrove(pipeline, executor, tasks, workers, logging_dir, overwrite)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
               TextColumn("{task.fields[docs]:,} docs ({task.fields[rate]:,.0f}/s)"), TimeElapsedColumn())
    with Progress(*columns, console=cli.console, disable=not sys.stderr.isatty()) as bar:
        tasks: dict[str, int] = {}
        import time

        t0 = time.perf_counter()

        def progress(label: str, done: int, total: int, docs: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total, docs=0, rate=0.0)
            rate = docs / max(time.perf_counter() - t0, 1e-9)
            bar.update(tasks[label], completed=done, docs=docs, rate=rate)

        try:
            result = pipeline.run(overwrite=overwrite, progress=progress)
        except CurateError as e:
            raise cli._fail(str(e)) from None
    if json_output:
        print(json.dumps(result.report, indent=2, ensure_ascii=False))
        return
    out = cli._stdout()
    for table in report_tables(result.report):
        out.print(table)
    r = result.report
    cli.console.print(f"{r['input_documents']:,} documents in, {r['output_documents']:,} kept "
                      f"({100 * r['kept_fraction']:.1f} %) in {r['seconds']:.1f} s, {r['documents_per_second']:,.0f} "
                      f"docs/s with {r['workers']} workers; {result.files_skipped} file passes resumed, "
                      f"{result.files_run} run. Output: {result.work_dir / 'output'}; report: "
                      f"{result.work_dir / 'report.json'}", soft_wrap=True)


def _run_datatrove(pipeline, executor: str, tasks: int | None, workers: int | None, logging_dir: Path | None,
                   overwrite: bool) -> None:
    from herd.data.records import CurateError
    from herd.data.scale_out import ScaleOutOptions, run_on_datatrove

    cli = _cli()
    try:
        options = ScaleOutOptions.from_config(pipeline.config, executor=executor, tasks=tasks, workers=workers,
                                              logging_dir=str(logging_dir) if logging_dir else None)
        result = run_on_datatrove(pipeline, options, overwrite=overwrite)
    except (CurateError, ImportError) as e:
        raise cli._fail(str(e)) from None
    n = sum(1 for _ in result.output_dir.glob("*.jsonl.gz"))
    cli.console.print(f"datatrove {executor} executor: stages {', '.join(result.stages)}; output {result.output_dir} "
                      f"({n} files); stats in {result.logging_dir}/<stage>/stats.json", soft_wrap=True)


@curate_app.command("train-quality")
def train_quality_cmd(
    labeled: Annotated[Path, typer.Argument(help='JSON Lines of {"text", "label"} (e.g. from herd curate label).')],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the fastText model (.bin).")],
    epoch: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.5,
    word_ngrams: Annotated[int, typer.Option(help="Word n-gram features.")] = 2,
    dim: Annotated[int, typer.Option(help="Embedding size.")] = 64,
    valid_fraction: Annotated[float, typer.Option(help="Held out for precision/recall.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Shuffle and training seed.")] = 0,
) -> None:
    """Train the fastText quality classifier that the `quality` step scores with."""
    from herd.data.quality import read_labeled, train_quality
    from herd.data.records import CurateError

    cli = _cli()
    try:
        metrics = train_quality(read_labeled(labeled), out, epoch=epoch, lr=lr, word_ngrams=word_ngrams, dim=dim,
                                valid_fraction=valid_fraction, seed=seed)
    except CurateError as e:
        raise cli._fail(str(e)) from None
    print(json.dumps(metrics, indent=2))


@curate_app.command("label")
def label_cmd(
    inputs: Annotated[Path, typer.Argument(help="JSON Lines records to label (a sample of the corpus).")],
    out: Annotated[Path, typer.Option("--out", "-o", help='Where to write {"text", "label", "p_yes"} JSON Lines.')],
    model: Annotated[Path, typer.Option("--model", "-m", help="A herd/HF Llama 3.x Instruct model directory.")],
    limit: Annotated[int, typer.Option(help="Label at most this many documents.")] = 1000,
    device: Annotated[str, typer.Option(help="cpu, cuda, …")] = "cpu",
) -> None:
    """Label a sample with a model prompted with quality criteria (Llama 3's recipe for the classifier)."""
    from herd.data.quality import label_with_model
    from herd.data.readers import InputSpec, expand_inputs, read_task
    from herd.data.records import CurateError
    from herd.tokenizer.hf_files import atomic_write

    cli = _cli()
    mdl, tok = cli._load(model, None, device)
    try:
        texts = []
        for task in expand_inputs([InputSpec(str(inputs))]):
            for rec in read_task(task):
                texts.append(rec["text"])
                if len(texts) >= limit:
                    break
    except CurateError as e:
        raise cli._fail(str(e)) from None
    rows = label_with_model(texts[:limit], mdl, tok)
    atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cli.console.print(f"labelled {len(rows)} documents → {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(curate_app, name="curate")


@curate_app.command("mix")
def mix_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="Curated output: work_dir/output or .jsonl.gz files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the groups, mix.json and mix.toml.")],
    weight: Annotated[list[str], typer.Option("--weight", "-w", help="GROUP=WEIGHT, repeatable (e.g. code=0.17).")],
    by: Annotated[str, typer.Option(help="meta field that names a record's group.")] = "source",
    token_budget: Annotated[int | None, typer.Option(help="Planned training tokens (reports epochs per group).")]
    = None,
    tokenizer: Annotated[Path | None, typer.Option(help="Also write token shards (herd tokenize format).")] = None,
) -> None:
    """Group curated records, weigh the groups, write the trainer's data.sources tables (mix.toml)."""
    from rich.table import Table

    from herd.data.mix import write_mix
    from herd.data.records import CurateError

    cli = _cli()
    weights = {}
    for item in weight:
        name, eq, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise cli._fail(f"--weight {item!r}: expected GROUP=NUMBER") from None
        if not eq:
            raise cli._fail(f"--weight {item!r}: expected GROUP=NUMBER")
    tok = None
    if tokenizer is not None:
        from herd.tokenizer import Tokenizer

        tok = Tokenizer.load(tokenizer)
    try:
        plan = write_mix(inputs, out, weights, by=by, token_budget=token_budget, tokenizer=tok)
    except CurateError as e:
        raise cli._fail(str(e)) from None
    table = Table("group", "weight", "documents", "tokens", "epochs", title=f"mix by meta.{by} → {out / 'mix.toml'}")
    for g, row in plan.groups.items():
        table.add_row(g, f"{row['weight']:.3f}", str(row["documents"]), str(row["tokens"]),
                      str(row.get("epochs", "-")) + (" (!)" if row.get("over_repeated") else ""))
    cli._stdout().print(table)
