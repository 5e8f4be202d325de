"""The pre-training loop: read it top to bottom.

    result = pretrain(load_config("configs/pretrain-tiny.toml"))

One optimizer step = one global batch (``global_batch_rows`` rows of ``seq_len`` tokens,
ramped by ``train.batch_ramp``), split over ranks and then into micro-batches. The loss
is the sum of token losses over every micro-batch of every rank divided by the number
of targets in all of them (counted and all-reduced before the first backward), so
gradient accumulation and data parallelism give the gradient of one big batch. Each
concern lives in its own module and is called from here: distributed (process group,
FSDP2), objective (the loss), optim (AdamW, clipping), schedule (lr, batch ramp), faults
(NaN / spikes), checkpointing (DCP, resume, signals) and metrics (JSON Lines, MFU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from herd.model import ModelArgs, Transformer
from herd.train.checkpointing import Checkpointer, SignalFlag
from herd.train.config import Config, ConfigError
from herd.train.distributed import (
    DistInfo,
    all_reduce_sum,
    build_model,
    full_state_dict,
    init_distributed,
    load_initial_weights,
    shutdown_distributed,
)
from herd.train.faults import FaultMonitor, TrainingFault
from herd.train.loader import Batch, PackedLoader, Source
from herd.train.metrics import MetricsLog, Progress, StepTimer, mfu, peak_flops
from herd.train.objective import CausalLM, Objective
from herd.train.optim import build_optimizer, clip_grad_norm
from herd.train.schedule import BatchRamp, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimizer steps done (including resumed ones)
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss, this process's steps
    final_loss: float | None = None
    export_dir: Path | None = None  # the native (HF-layout) model, when the run finished
    checkpoint: Path | None = None
    resumed_from: Path | None = None
    stopped_by_signal: bool = False


def pretrain(config: Config, *, objective: Objective | None = None, loader: Any = None,
             prepare_model: Callable[[nn.Module, DistInfo], nn.Module] | None = None,
             export: Callable[[nn.Module, ModelArgs, DistInfo, Path], Path | None] | None = None) -> TrainResult:
    """Train as ``config`` says, resuming from ``run_dir/checkpoints`` when it can.

    Under torchrun every process calls this; the model is sharded with FSDP2 over all of
    them. ``objective`` defaults to the causal-LM loss; ``loader`` (anything with
    ``next_batch(global_rows)`` / ``state_dict`` / ``load_state_dict``) to a
    ``PackedLoader`` over ``config.data``. A batch that is not a ``Batch`` brings its own
    ``split(micro_rows)`` and ``to(device)`` and an ``n_targets`` count.

    Post-training hooks: ``prepare_model(model, info)`` runs on the freshly built model
    before the optimizer sees it (load base weights, add adapters or heads, freeze
    parameters; frozen ones get no optimizer state); ``export(model, args, info, dir)``
    replaces the final HF export (adapters in PEFT's layout, a reward model).
    """
    config.validate()
    info = init_distributed(config.train.device, config.train.tensor_parallel)
    try:
        return _train(config, info, objective, loader, prepare_model, export)
    finally:
        shutdown_distributed(info)


def _train(cfg: Config, info: DistInfo, objective: Objective | None, loader: Any,
           prepare_model: Callable[[nn.Module, DistInfo], nn.Module] | None = None,
           export: Callable[[nn.Module, ModelArgs, DistInfo, Path], Path | None] | None = None) -> TrainResult:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    _seed_everything(cfg.train.seed)

    # ---- model, optimizer, schedule, data
    args = ModelArgs.from_name(cfg.model.preset, **cfg.model.overrides)
    if cfg.data.seq_len > args.max_seq_len:
        raise ConfigError(f"data.seq_len = {cfg.data.seq_len} exceeds the model's max_seq_len = {args.max_seq_len}")
    amp_dtype = _amp_dtype(cfg.train.dtype, info.device)
    model = build_model(args, info, init_std=cfg.model.init_std, seed=cfg.train.seed,
                        activation_checkpointing=cfg.train.activation_checkpointing, compile=cfg.train.compile,
                        mixed_precision=amp_dtype if info.sharded else None)
    if cfg.model.init_from:
        try:
            load_initial_weights(model, cfg.model.init_from, args, info)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(str(e)) from None
    if prepare_model is not None:
        model = prepare_model(model, info)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.steps, cfg.optim.lr)
    ramp = BatchRamp.from_config(cfg.train.global_batch_rows, cfg.train.batch_ramp)
    _check_batch_sizes(ramp, info.dp_size)
    loader = loader if loader is not None else make_loader(cfg, args, info)
    objective = objective or CausalLM(cfg.train.loss_chunk_size, cfg.data.document_masking, cfg.train.loss_mode)
    faults = FaultMonitor(cfg.faults)
    autocast = (torch.autocast(info.device.type, dtype=amp_dtype) if amp_dtype and not info.sharded
                else contextlib.nullcontext())

    # ---- resume
    ckpt = Checkpointer(run_dir / "checkpoints", keep_last=cfg.checkpoint.keep_last,
                        async_save=_async(cfg.checkpoint.async_save, info.device))
    metrics = MetricsLog(run_dir / "metrics.jsonl", enabled=info.is_main)
    result = TrainResult(run_dir=run_dir, step=0)
    step, tokens_seen = 0, 0

    def trainer_state() -> dict[str, Any]:  # what DCP does not hold, saved as trainer.json
        return {"tokens": tokens_seen, "scheduler": scheduler.state_dict(), "loader": loader.state_dict(),
                "faults": faults.state_dict()}

    resume_from = ckpt.find_resumable() if cfg.checkpoint.resume else None
    if resume_from is not None:
        state = ckpt.load(resume_from, model, optimizer)
        step, tokens_seen = state["step"], state["tokens"]
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        faults.load_state_dict(state["faults"])
        metrics.truncate_after(step)
        result.resumed_from = resume_from
        log.info("resumed from %s at step %d", resume_from, step)
    elif cfg.faults.action == "rollback":
        ckpt.save(0, model, optimizer, trainer_state())  # something to roll back to

    signals = SignalFlag() if cfg.checkpoint.save_on_signal else None
    flops_per_token = args.flops_per_token(cfg.data.seq_len)
    peak = peak_flops(info.device, amp_dtype or torch.float32, cfg.metrics.peak_flops)
    progress = Progress(cfg.train.steps, start=step, enabled=info.is_main and _progress_on(cfg.metrics.progress))
    timer = StepTimer(info.device)

    # ---- the loop
    model.train()
    while step < cfg.train.steps:
        global_rows = ramp(step)
        batch = loader.next_batch(global_rows)  # this rank's rows of the global batch
        micro_batches = split_batch(batch, cfg.train.micro_batch_rows)
        n_targets = all_reduce_sum([float(batch.n_targets)], info)[0]  # before any backward
        extra: dict[str, float] = {}  # the objective's metrics, summed over micro-batches
        loss_sum = accumulate_gradients(model, objective, micro_batches, n_targets=n_targets, info=info,
                                        autocast=autocast, poison=faults.inject(step), metrics=extra)
        loss = all_reduce_sum([loss_sum], info)[0] / max(n_targets, 1.0)
        extra = dict(zip(extra, (v / max(n_targets, 1.0) for v in all_reduce_sum(list(extra.values()), info)),
                         strict=True))
        grad_norm = clip_grad_norm(model, cfg.optim.grad_clip)
        lr = scheduler.apply(step)

        verdict = faults.check(step, loss, grad_norm)
        if verdict.ok or cfg.faults.action == "ignore":
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += global_rows * cfg.data.seq_len
        result.losses[step] = loss

        elapsed = timer.lap()
        tokens_per_s = global_rows * cfg.data.seq_len / elapsed
        record = {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": tokens_seen,
                  "rows": global_rows, "n_targets": int(n_targets), "tokens_per_s": tokens_per_s,
                  "mfu": mfu(tokens_per_s, flops_per_token, peak, info.world_size), "step_time_s": elapsed,
                  **extra}
        if not verdict.ok:
            record["fault"] = verdict.reason
            record["action"] = cfg.faults.action
            if verdict.zscore is not None:
                record["zscore"] = verdict.zscore
            progress.log(f"step {step}: loss fault ({verdict.reason}, loss {loss}) -> {cfg.faults.action}")
            log.warning("step %d: loss fault (%s, loss %s) -> %s", step, verdict.reason, loss, cfg.faults.action)
        if step % cfg.metrics.log_every == 0 or not verdict.ok:
            metrics.write(record)
        progress.update(step, record)

        if not verdict.ok and cfg.faults.action == "rollback":
            path = ckpt.find_resumable()
            if path is None:
                raise TrainingFault(f"step {step}: loss fault ({verdict.reason}) and no checkpoint to roll back to")
            state = ckpt.load(path, model, optimizer, rng=False)
            scheduler.load_state_dict(state["scheduler"])
            step, tokens_seen = state["step"], state["tokens"]  # the loader keeps going: new data
            metrics.write({"event": "rollback", "to_step": step, "from": str(path)})
            progress.log(f"rolled back to {path}")
            continue

        # ---- checkpoints and signals, at the step boundary
        stop = signals is not None and signals.should_stop()
        if stop or step == cfg.train.steps or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
            ckpt.save(step, model, optimizer, trainer_state())
            timer.reset()  # the save is not training time
        else:
            ckpt.poll()
        if stop:
            result.stopped_by_signal = True
            progress.log(f"signal received: saved step {step}, exiting")
            break

    # ---- the end: finish saves, export the model
    ckpt.wait()
    progress.close()
    metrics.close()
    if signals is not None:
        signals.restore()
    result.step = step
    result.final_loss = result.losses.get(step)
    steps_done = ckpt.steps()
    result.checkpoint = ckpt.root / f"step-{steps_done[-1]:06d}" if steps_done else None
    if step >= cfg.train.steps and cfg.checkpoint.export:
        if export is not None:
            result.export_dir = export(model, args, info, run_dir / "final")
        else:
            result.export_dir = export_model(model, args, info, run_dir / "final", tokenizer=cfg.data.tokenizer)
    return result


# --------------------------------------------------------------------------- helpers


def accumulate_gradients(model: nn.Module, objective: Objective, micro_batches: list[Batch], *,
                         n_targets: float, info: DistInfo = DistInfo(),
                         autocast: Any = contextlib.nullcontext(), poison: bool = False,
                         metrics: dict[str, float] | None = None) -> float:
    """Forward and backward every micro-batch; returns this rank's loss sum.

    Each micro-batch's loss SUM is divided by ``n_targets``, the target count of the whole
    step over all micro-batches and ranks, so the accumulated gradient is exactly that of
    the mean loss over the global batch, however unevenly the targets fall. FSDP2 averages
    gradients over the data-parallel ranks, so the loss is also multiplied by their number
    (the world size over the tensor-parallel degree). ``poison``
    (a test hook for fault handling) turns the loss into NaN. ``metrics``, when given,
    receives the sum over micro-batches of each metric the objective returns (objectives
    return sums over their targets; the loop divides by the step's target count).
    """
    scale = info.dp_size / max(n_targets, 1.0)
    loss_sum = 0.0
    for i, micro in enumerate(micro_batches):
        _sync_gradients(model, i == len(micro_batches) - 1)
        with autocast:
            micro_loss, _, micro_metrics = objective(model, to_device(micro, info.device))
        if metrics is not None:
            for key, value in micro_metrics.items():
                metrics[key] = metrics.get(key, 0.0) + float(value)
        if poison and i == 0:
            micro_loss = micro_loss * float("nan")
        (micro_loss * scale).backward()
        loss_sum = loss_sum + micro_loss.detach().float()
    return float(loss_sum)


def make_loader(cfg: Config, args: ModelArgs, info: DistInfo) -> PackedLoader:
    """The PackedLoader over ``cfg.data`` (synthetic shards are written once, by rank 0)."""
    tokenizer_hash = None
    if cfg.data.kind == "synthetic":
        from herd.train.synthetic import make_synthetic_shards

        data_dir = Path(cfg.run_dir) / "synthetic-data"
        if info.is_main:
            make_synthetic_shards(data_dir, vocab_size=args.vocab_size, seed=cfg.train.seed)
        _barrier(info)
        sources = [Source("synthetic", make_synthetic_shards(data_dir, vocab_size=args.vocab_size,
                                                             seed=cfg.train.seed))]
    else:
        sources = [Source(s.name, _expand_paths(s.paths, s.name), s.weight) for s in cfg.data.sources]
        if cfg.data.tokenizer:
            from herd.tokenizer import Tokenizer

            tokenizer_hash = Tokenizer.load(cfg.data.tokenizer).hash
    return PackedLoader(sources, cfg.data.seq_len, rank=info.dp_rank, world_size=info.dp_size,
                        seed=cfg.train.seed, document_masking=cfg.data.document_masking,
                        tokenizer_hash=tokenizer_hash)


def _expand_paths(paths: list[str], source: str) -> list[Path]:
    from herd.data.shards import find_shards

    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = find_shards(p)
            if not found:
                raise ConfigError(f"data.sources[{source!r}]: directory {p} holds no token shards")
            out.extend(found)
        else:
            out.append(p)
    return out


def split_batch(batch: Batch, micro_rows: int) -> list[Batch]:
    """Micro-batches of ``micro_rows`` rows (the last may be smaller), each with its own target count."""
    if not isinstance(batch, Batch):
        return batch.split(micro_rows)  # post-training batches (pairs, rollouts) split themselves
    rows = batch.tokens.shape[0]
    out = []
    for start in range(0, rows, micro_rows):
        part = slice(start, start + micro_rows)
        labels = batch.labels[part]
        out.append(dataclasses.replace(batch, tokens=batch.tokens[part], labels=labels,
                                       document_ids=batch.document_ids[part], positions=batch.positions[part],
                                       n_targets=int((labels != -100).sum())))
    return out


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    if not isinstance(batch, Batch):
        return batch.to(device)
    return dataclasses.replace(batch, **{f: getattr(batch, f).to(device, non_blocking=True)
                                         for f in ("tokens", "labels", "document_ids", "positions")})


def export_model(model: nn.Module, args: ModelArgs, info: DistInfo, out_dir: Path,
                 *, tokenizer: str | None = None) -> Path | None:
    """Write the trained model in the native (HF) layout with ``save_pretrained`` (rank 0)."""
    from herd.checkpoint import save_pretrained

    state = full_state_dict(model)  # every rank takes part in the gather
    if not info.is_main:
        return None
    with torch.device("meta"):
        plain = Transformer(args)
    plain.load_state_dict(state, assign=True)
    if args.tie_word_embeddings:
        plain.lm_head.weight = plain.model.embed_tokens.weight
    tok = None
    if tokenizer:
        from herd.tokenizer import Tokenizer

        tok = Tokenizer.load(tokenizer)
    return save_pretrained(plain, out_dir, tokenizer=tok)


def _sync_gradients(model: nn.Module, sync: bool) -> None:
    """FSDP2: reduce-scatter gradients only after the last micro-batch of a step."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)


def _check_batch_sizes(ramp: BatchRamp, world_size: int) -> None:
    for rows in ramp.all_sizes():
        if rows % world_size:
            raise ConfigError(f"train.global_batch_rows / batch_ramp size {rows} is not divisible by the "
                              f"data-parallel size {world_size}")


def _amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return torch.bfloat16 if name == "bfloat16" else None


def _async(mode: str, device: torch.device) -> bool:
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def _progress_on(mode: str) -> bool:
    import sys

    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _barrier(info: DistInfo) -> None:
    if info.sharded:
        torch.distributed.barrier()

