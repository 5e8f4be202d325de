"""Writing a checkpoint directory all at once: build it under a temporary name, then rename."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from herd.checkpoint.errors import CheckpointError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB`` (10**9, as transformers counts), ``512MiB`` (2**20) or an int."""
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE.match(size)
        if m is None:
            raise CheckpointError(f"cannot parse size {size!r}; write e.g. '5GB', '500MB' or '2GiB'")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value <= 0:
        raise CheckpointError(f"size must be positive, got {size!r}")
    return value


def dir_size(path: Path) -> int:
    """Total bytes of the regular files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def atomic_directory(dst: str | os.PathLike, stale: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``dst``; on success publish it as ``dst``.

    A new ``dst`` appears by one rename. An existing ``dst`` keeps its other files: each
    new file replaces its namesake by rename, then files matching a ``stale`` pattern
    that this write did not produce (old shards) are removed. On error the temporary
    directory is deleted and ``dst`` is untouched.
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"cannot write a checkpoint to {dst}: it is a file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, dst, stale)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, dst: Path, stale: Sequence[str]) -> None:
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if not dst.exists():
        os.replace(tmp, dst)
        return
    new = sorted(p.name for p in tmp.iterdir())
    for name in sorted(new, key=lambda n: n == "config.json"):  # config.json last
        target = dst / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    tmp.rmdir()
    for old in dst.iterdir():
        if old.name not in new and any(fnmatch.fnmatch(old.name, pat) for pat in stale):
            old.unlink()
