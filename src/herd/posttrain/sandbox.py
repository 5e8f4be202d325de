"""Run generated Python in a sandbox: a subprocess with no network, resource limits and a timeout.

    result = run_python(code + "\\n" + tests, SandboxLimits(timeout_s=5))
    result.passed          # exit status 0: the code ran and every assert held

Llama 3's execution feedback for code: a generated solution counts only if its unit tests
pass. The child process gets:

- no network: ``unshare --net --map-root-user`` (a fresh network namespace with only a
  downed loopback) where the kernel allows unprivileged user namespaces; in every case
  also an audit hook, installed before the code runs, that refuses socket connect / bind
  / name lookups (a guard against accidents, not a security boundary on its own);
- hard rlimits (``resource``, set by a prelude in the child's own script rather than a
  ``preexec_fn``, which is unsafe in a threaded parent such as torch): CPU seconds,
  address space, size of any file written, no core files, a cap on open files;
- a wall-clock timeout, after which its whole process group is killed;
- a fresh temporary directory as cwd and HOME, a minimal environment, ``python -I``
  (no user site, no PYTHONPATH), removed afterwards.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs in the child before the generated code (in the same file, so nothing can skip it):
# hard rlimits (an unprivileged process cannot raise them again) and the network audit hook.
PRELUDE = """import resource as _r, sys as _s
for _k, _v in {limits!r}:
    _r.setrlimit(getattr(_r, _k), (_v, _v))
def _no_network(event, args):
    if event in ("socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
                 "socket.sendto", "socket.sendmsg"):
        raise PermissionError("network access is disabled in the herd sandbox")
_s.addaudithook(_no_network)
del _r, _s, _k, _v, _no_network
"""


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock
    cpu_s: int = 10
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16
    open_files: int = 64


@dataclass
class SandboxResult:
    passed: bool  # exited with status 0 within the limits
    returncode: int | None  # None: killed by the timeout
    timed_out: bool
    stdout: str
    stderr: str
    isolation: str  # "netns" (unshare) or "audit-hook"


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare --net --map-root-user`` works here (unprivileged user namespaces)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "--net", "--map-root-user", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _rlimits(limits: SandboxLimits) -> list[tuple[str, int]]:
    mb = 1024 * 1024
    return [("RLIMIT_CPU", limits.cpu_s), ("RLIMIT_AS", limits.memory_mb * mb),
            ("RLIMIT_FSIZE", limits.file_size_mb * mb), ("RLIMIT_CORE", 0), ("RLIMIT_NOFILE", limits.open_files)]


def run_python(code: str, limits: SandboxLimits | None = None, *, max_output: int = 10_000) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; stdout/stderr are cut to ``max_output`` chars."""
    limits = limits or SandboxLimits()
    isolation = "netns" if network_namespace_available() else "audit-hook"
    with tempfile.TemporaryDirectory(prefix="herd-sandbox-") as tmp:
        script = Path(tmp) / "main.py"
        script.write_text(PRELUDE.format(limits=_rlimits(limits)) + "\n" + code, encoding="utf-8")
        cmd = [sys.executable, "-I", "-B", str(script)]
        if isolation == "netns":
            cmd = [shutil.which("unshare") or "unshare", "--net", "--map-root-user", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            timed_out = True
    code_ = None if timed_out else proc.returncode
    return SandboxResult(passed=code_ == 0, returncode=code_, timed_out=timed_out,
                         stdout=out.decode("utf-8", "replace")[-max_output:],
                         stderr=err.decode("utf-8", "replace")[-max_output:], isolation=isolation)
