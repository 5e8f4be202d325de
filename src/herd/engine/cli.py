"""`herd engine …`: the serving memory estimate, and batch generation through the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

engine_app = typer.Typer(help="The continuous-batching inference engine.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(engine_app, name="engine")


def _kv_dtype(kv_cache: str) -> str | None:
    from herd.cli import _fail

    if kv_cache not in ("auto", "int8"):
        raise _fail(f"--kv-cache {kv_cache!r}: expected auto or int8")
    return None if kv_cache == "auto" else kv_cache


@engine_app.command("memory")
def memory(
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory (HF or Meta layout); "
                                               "only its config and file sizes are read.")] = None,
    preset: Annotated[str | None, typer.Option(help="A herd preset instead of a directory.")] = None,
    dtype: Annotated[str, typer.Option(help="Weights and KV dtype: bfloat16, float16, float32.")] = "bfloat16",
    budget: Annotated[str | None, typer.Option(help="Memory for weights + KV cache, e.g. 24GiB.")] = None,
    block_size: Annotated[int, typer.Option(help="Tokens per KV block.")] = 16,
    kv_cache: Annotated[str, typer.Option(help="KV cache: 'auto' (the dtype above) or 'int8'.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Weights + KV bytes per token of a model, and how many tokens of KV a budget holds."""
    import torch

    from herd.checkpoint.config import as_dtype
    from herd.cli import _fail
    from herd.engine.memory import estimate_serving_memory, parse_bytes
    from herd.model import ModelArgs

    if (model is None) == (preset is None):
        raise _fail("give exactly one of --model DIR or --preset NAME")
    kv_dtype = _kv_dtype(kv_cache)
    try:
        torch_dtype = as_dtype(dtype)
        budget_bytes = None if budget is None else parse_bytes(budget)
    except ValueError as e:
        raise _fail(f"--budget/--dtype: {e}") from None
    weight_bytes = None
    if preset is not None:
        try:
            args = ModelArgs.from_name(preset)
        except KeyError as e:
            raise _fail(str(e.args[0])) from None
    else:
        from herd.checkpoint import CheckpointError
        from herd.checkpoint.inspect import inspect_checkpoint

        if not model.exists():
            raise _fail(f"model directory {model} does not exist")
        try:
            info = inspect_checkpoint(model)
        except (CheckpointError, FileNotFoundError, ValueError) as e:
            raise _fail(str(e)) from None
        c = info["config"]
        args = ModelArgs(dim=c["dim"], n_layers=c["n_layers"], n_heads=c["n_heads"], n_kv_heads=c["n_kv_heads"],
                         vocab_size=c["vocab_size"], hidden_dim=c["ffn_dim"], head_dim_override=c["head_dim"],
                         max_seq_len=c["max_seq_len"], tie_word_embeddings=c["tie_word_embeddings"])
        weight_bytes = info["num_params"] * torch_dtype.itemsize
    try:
        est = estimate_serving_memory(args, torch_dtype, budget=budget_bytes, block_size=block_size,
                                      weight_bytes=weight_bytes, kv_dtype=torch.int8 if kv_dtype else None)
        est.summary()
    except ValueError as e:
        raise _fail(str(e)) from None
    if json_output:
        out = {"weights_bytes": est.weights, "kv_bytes_per_token": est.kv_per_token,
               "kv_bytes_full_context": est.kv_bytes(args.max_seq_len), "budget_bytes": est.budget,
               "kv_blocks": None if budget is None else est.num_blocks, "kv_tokens": est.max_tokens,
               "block_size": block_size}
        print(json.dumps(out))
        return
    print(est.summary())
    print(f"one full context ({args.max_seq_len} tokens): {est.kv_bytes(args.max_seq_len) / (1 << 30):.3f} GiB "
          "of KV")


@engine_app.command("generate")
def generate(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory (HF or Meta layout).")],
    prompts: Annotated[Path, typer.Option(help="Prompts: a .txt file (one per line) or .jsonl with a "
                                          "\"prompt\" field.")],
    memory_budget: Annotated[str, typer.Option("--memory", help="Memory for weights + KV cache.")] = "4GiB",
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per completion.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.6,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 0.9,
    seed: Annotated[int | None, typer.Option(help="Seed (prompt i samples with seed + i).")] = None,
    dtype: Annotated[str | None, typer.Option(help="Weights dtype (default: the checkpoint's).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, …")] = "cpu",
    kv_cache: Annotated[str, typer.Option(help="KV cache: 'auto' (the weights' dtype) or 'int8' "
                                          "(about half the bytes: more requests fit --memory).")] = "auto",
) -> None:
    """Complete every prompt of a file at once (continuous batching); one JSON line per
    completion on stdout, in the order they finish."""
    from herd.cli import _fail, _load, _sampling, console
    from herd.engine import Engine
    from herd.engine.memory import parse_bytes

    if not prompts.exists():
        raise _fail(f"prompts file {prompts} does not exist")
    texts = []
    for i, line in enumerate(prompts.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        if prompts.suffix == ".jsonl":
            try:
                texts.append(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise _fail(f"{prompts}:{i + 1}: expected a JSON object with a \"prompt\" string") from None
        else:
            texts.append(line)
    if not texts:
        raise _fail(f"{prompts} holds no prompts")
    try:
        budget = parse_bytes(memory_budget)
    except ValueError as e:
        raise _fail(f"--memory: {e}") from None
    lm, tokenizer = _load(model, dtype, device)
    try:
        engine = Engine(lm, tokenizer, memory=budget, kv_dtype=_kv_dtype(kv_cache))
    except ValueError as e:
        raise _fail(str(e)) from None
    console.print(f"[dim]{engine.memory.summary()}[/]")
    ids = {}
    for i, text in enumerate(texts):
        params = _sampling(max_new_tokens, temperature, top_p, None if seed is None else seed + i)
        try:
            ids[engine.add_request(tokenizer.encode(text, bos=True, eos=False), params)] = i
        except ValueError as e:
            raise _fail(f"prompt {i + 1}: {e}") from None
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                c = out.completion
                print(json.dumps({"index": ids[out.request_id], "text": c.text, "finish_reason": c.finish_reason,
                                  "prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids)},
                                 ensure_ascii=False), flush=True)
    stats = engine.stats
    console.print(f"[dim]{len(stats.steps)} steps, largest batch {stats.max_batch}, "
                  f"{engine.scheduler.preemptions} preemptions, prefix-cache hits {engine.blocks.hits} blocks[/]")
