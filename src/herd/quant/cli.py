"""`herd quantize` and `herd export gguf`: thin layers over herd.quant and herd.checkpoint.gguf."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from herd.cli import _fail, _load, console

    @app.command()
    def quantize(
        model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (HF or Meta layout).")],
        scheme: Annotated[str, typer.Option(
            help="int8 | int4 | int4-g32 | int4-g64 | int4-gptq[-gNN] | int4-gptq-act[-gNN] (act-order) | "
                 "int4-hqq[-gNN] (no calibration) | fp8 (Llama 3.1 FP8 row-wise). Append +lm_head to int8, int4 "
                 "or int4-hqq to quantize the LM head too (unties a tied embedding).")],
        out: Annotated[Path, typer.Option(help="Output directory (compressed-tensors or fbgemm_fp8 layout).")],
        calibration: Annotated[Path | None, typer.Option(
            help="Text for GPTQ: .txt, or .jsonl/.jsonl.gz with a text field.")] = None,
        calibration_rows: Annotated[int, typer.Option(help="GPTQ: calibration sequences.")] = 128,
        calibration_len: Annotated[int, typer.Option(help="GPTQ: tokens per calibration sequence.")] = 512,
        dtype: Annotated[str, typer.Option(help="dtype of what stays unquantized.")] = "bfloat16",
        layout: Annotated[str, typer.Option(
            help="hf (compressed-tensors / fbgemm_fp8) or meta (fp8 only: Meta's consolidated.NN.pth + "
                 "fp8_scales_N.pt, as llama-models reads).")] = "hf",
        model_parallel: Annotated[int, typer.Option(help="--layout meta: model-parallel shards to write.")] = 1,
    ) -> None:
        """Quantize a checkpoint and save it in the layout vLLM / transformers (or llama-models) read."""

        from herd.checkpoint import CheckpointError
        from herd.checkpoint.config import as_dtype
        from herd.quant import QuantScheme, model_bytes, save_quantized
        from herd.quant import quantize as run_quantize
        from herd.quant.calibration import batches, read_texts, token_rows
        from herd.quant.quantize import CALIBRATED

        try:
            parsed = QuantScheme.parse(scheme)
        except ValueError as e:
            raise _fail(str(e)) from None
        if parsed.method in CALIBRATED and calibration is None:
            raise _fail(f"--scheme {scheme} needs --calibration TEXT_FILE")
        if layout not in ("hf", "meta"):
            raise _fail(f"--layout {layout!r}: expected hf or meta")
        if layout == "meta" and parsed.kind != "fp8":
            raise _fail(f"--layout meta holds FP8 row-wise only (Meta's layout); --scheme {scheme} saves as hf")
        net, tokenizer = _load(model, "float32", "cpu")
        try:
            before = sum(p.numel() for p in net.parameters()) * 2  # bf16
            data = None
            if parsed.method in CALIBRATED:
                rows = token_rows(tokenizer, read_texts(calibration), calibration_rows, calibration_len)
                data = batches(rows, 8)
            with console.status(f"Quantizing to {parsed.name} …"):
                run_quantize(net, parsed, calibration=data)
            net.to(as_dtype(dtype))
            if layout == "meta":
                from herd.quant.meta_fp8 import save_meta_fp8

                save_meta_fp8(net, out, model_parallel=model_parallel, dtype=dtype, tokenizer=tokenizer)
            else:
                save_quantized(net, out, tokenizer=model, dtype=dtype)
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            raise _fail(str(e)) from None
        after = model_bytes(net)
        console.print(f"[green]wrote[/] {out} ({parsed.name}: {after / 2**20:.1f} MiB of weights, "
                      f"bf16 {before / 2**20:.1f} MiB)")

    export_app = typer.Typer(help="Export a model to other runtimes' formats.", no_args_is_help=True)
    app.add_typer(export_app, name="export")

    @export_app.command("gguf")
    def export_gguf_cmd(
        model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (HF or Meta layout).")],
        out: Annotated[Path, typer.Option(help="Output .gguf file.")],
        type_: Annotated[str, typer.Option("--type", help="f16 or q8_0.")] = "f16",
    ) -> None:
        """Write a llama.cpp / Ollama GGUF (llama architecture, tokenizer and chat template inside)."""

        from herd.checkpoint import CheckpointError
        from herd.checkpoint.gguf import chat_template_of, export_gguf

        net, tokenizer = _load(model, "float32", "cpu")
        try:
            with console.status(f"Writing {out} …"):
                export_gguf(net, out, tokenizer, file_type=type_, chat_template=chat_template_of(model))
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            raise _fail(str(e)) from None
        console.print(f"[green]wrote[/] {out} ({type_}, {out.stat().st_size / 2**20:.1f} MiB)")
