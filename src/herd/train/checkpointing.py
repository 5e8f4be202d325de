"""Training state on disk: torch.distributed.checkpoint (DCP) directories, resumable.

    checkpoints/
      step-000100/
        .metadata, __0_0.distcp, ...   model + optimizer (DCP: each rank writes its shards;
                                       a different world size reshards on load)
        trainer.json                   step, scheduler, data-loader position, fault monitor
        rng-rank00000.pt, ...          torch CPU/CUDA, python and numpy RNG states per rank
        manifest.json                  sha256 and size of every file above, written last
      latest                           "step-000100", replaced by atomic rename after the manifest

A checkpoint is assembled in ``step-000100.tmp/`` and renamed into place once complete,
so a crash mid-save leaves only a ``.tmp`` directory that resume ignores. On resume the
directory ``latest`` names is verified against its manifest; if a file is missing,
truncated or altered, it is skipped with a warning and the newest older checkpoint that
verifies is used. Only the last ``keep_last`` checkpoints are kept.

Saving is asynchronous (``dcp.async_save``) where it pays (CUDA: the state is staged to
host memory and written while training goes on); the manifest, the rename and ``latest``
follow when the write has finished, at a later step boundary. On CPU the state is
cloned before an async save, so the next update cannot race with the writer.

``SignalFlag`` turns SIGTERM / SIGINT into a flag the loop reads at each step boundary:
it saves and exits cleanly instead of dying mid-update.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

log = logging.getLogger(__name__)
# One process without a process group is a supported case here (no_dist=True), not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

LATEST = "latest"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


class CheckpointCorrupt(RuntimeError):
    pass


# --------------------------------------------------------------------------- state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist() else 0


def _barrier() -> None:
    if _dist():
        dist.barrier()


def _clone(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_clone(v) for v in tree]
    return tree


# --------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"files": {str(p.relative_to(directory)): {"sha256": sha256_file(p), "size": p.stat().st_size}
                          for p in files}}
    _atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1))


def verify_manifest(directory: Path) -> None:
    """Raise CheckpointCorrupt naming the first missing or altered file."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointCorrupt(f"{directory}: no {MANIFEST} (an unfinished save?)")
    try:
        manifest = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointCorrupt(f"{manifest_path}: unreadable manifest ({e})") from None
    for name, entry in manifest.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointCorrupt(f"{path}: missing")
        if path.stat().st_size != entry["size"]:
            raise CheckpointCorrupt(f"{path}: {path.stat().st_size} bytes, manifest says {entry['size']}")
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointCorrupt(f"{path}: sha256 does not match the manifest")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Save, find and load training checkpoints under ``root`` (every rank calls every method)."""

    def __init__(self, root: str | os.PathLike, *, keep_last: int = 3, async_save: bool = False) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.async_save = async_save
        self._pending: tuple[int, Path, Future] | None = None
        self._pg = None
        if async_save and _dist():
            # a separate gloo group, so the background writer's collectives never interleave with training's
            self._pg = dist.new_group(backend="gloo")

    # ---- saving

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             trainer_state: dict[str, Any]) -> None:
        """Write the state after ``step`` updates; ``trainer_state`` must be JSON-serialisable."""
        self.wait()
        final = self.root / step_dir_name(step)
        tmp = final.with_name(final.name + ".tmp")
        # An optimizer that has not stepped has no state; DCP's get_state_dict would create it
        # by a zero-lr step, which counts as an Adam step: save the model alone instead.
        has_optim = bool(optimizer.state)
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _atomic_write(tmp / TRAINER_STATE, json.dumps({"step": step, "optimizer": has_optim, **trainer_state}))
        _barrier()
        torch.save(rng_state(), tmp / f"rng-rank{_rank():05d}.pt")
        state = {"model": get_model_state_dict(model)}
        if has_optim:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        kwargs = {"no_dist": True} if not _dist() else {}
        if self.async_save:
            if not any(t.is_cuda for t in _tensors(state)):
                state = _clone(state)  # CPU tensors are not staged by a copy: take one now
            future = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._pg, **kwargs)
            self._pending = (step, tmp, future)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.save(state, checkpoint_id=str(tmp), **kwargs)
            self._finalize(step, tmp)

    def poll(self) -> None:
        """Finish an async save whose write is done on every rank (called at step boundaries)."""
        if self._pending is None:
            return
        done = torch.tensor([int(self._pending[2].done())])
        if _dist():
            dist.all_reduce(done, op=dist.ReduceOp.MIN, group=self._pg)
        if done.item():
            self.wait()

    def wait(self) -> None:
        """Block until a pending async save is written, then publish it."""
        if self._pending is None:
            return
        step, tmp, future = self._pending
        self._pending = None
        future.result()
        self._finalize(step, tmp)

    def _finalize(self, step: int, tmp: Path) -> None:
        _barrier()
        if _rank() == 0:
            write_manifest(tmp)
            final = self.root / step_dir_name(step)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _atomic_write(self.root / LATEST, final.name)
            self._prune()
            log.info("saved checkpoint %s", final)
        _barrier()

    def _prune(self) -> None:
        steps = sorted(self.steps())
        latest = self.root / LATEST
        keep = latest.read_text().strip() if latest.exists() else None
        for step in steps[:-self.keep_last]:
            if step_dir_name(step) != keep:
                shutil.rmtree(self.root / step_dir_name(step), ignore_errors=True)

    # ---- finding

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())

    def find_resumable(self) -> Path | None:
        """The checkpoint ``latest`` names if it verifies, else the newest older one that does.

        Rank 0 verifies; the choice is broadcast so every rank loads the same one.
        """
        choice: list[str | None] = [None]
        if _rank() == 0:
            choice[0] = self._find_on_rank0()
        if _dist():
            dist.broadcast_object_list(choice, src=0)
        return Path(choice[0]) if choice[0] else None

    def _find_on_rank0(self) -> str | None:
        latest = self.root / LATEST
        named = latest.read_text().strip() if latest.is_file() else None
        candidates = sorted(self.steps(), reverse=True)
        if named is not None and _STEP_DIR.match(named):
            named_step = int(named[5:])
            candidates = [s for s in candidates if s <= named_step]
            if named_step not in candidates:
                warnings.warn(f"checkpoint {self.root / named} (named by {latest}) is missing", stacklevel=3)
        for step in candidates:
            path = self.root / step_dir_name(step)
            try:
                verify_manifest(path)
            except CheckpointCorrupt as e:
                warnings.warn(f"skipping corrupt checkpoint: {e}; falling back to an older one", stacklevel=3)
                continue
            return str(path)
        return None

    # ---- loading

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             *, rng: bool = True) -> dict[str, Any]:
        """Load model (and optimizer, RNG) state from ``path`` in place; returns the trainer state."""
        self.wait()
        trainer = json.loads((path / TRAINER_STATE).read_text())
        state = {"model": get_model_state_dict(model)}
        with_optim = optimizer is not None and trainer.get("optimizer", True)
        if with_optim:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        kwargs = {"no_dist": True} if not _dist() else {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path), **kwargs)
        set_model_state_dict(model, state["model"])
        if with_optim:
            set_optimizer_state_dict(model, optimizer, state["optim"])
        elif optimizer is not None:
            optimizer.state.clear()  # the checkpoint predates the first update: a fresh optimizer
        rng_path = path / f"rng-rank{_rank():05d}.pt"
        if rng and rng_path.exists():  # absent when resuming at a larger world size
            set_rng_state(torch.load(rng_path, weights_only=False))
        return trainer


def _tensors(tree: Any):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _tensors(v)


# --------------------------------------------------------------------------- signals


class SignalFlag:
    """SIGTERM / SIGINT set ``requested`` instead of killing the process (a second SIGINT does)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def should_stop(self) -> bool:
        """The flag, agreed over all ranks (any rank signalled -> all stop)."""
        flag = torch.tensor([int(self.requested is not None)])
        if _dist():
            if dist.get_backend() == "nccl":
                flag = flag.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
