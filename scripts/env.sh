#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install herd into it.
# Sourced by scripts/herd.sh and scripts/test.sh; safe to run again (it only reinstalls when
# pyproject.toml changed). The CPU build of PyTorch is pinned: an unpinned `torch` would
# pull a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HERD_VENV:-$root/.venv}"
torch_spec="${HERD_TORCH:-torch==2.13.0}"
extras="${HERD_EXTRAS:-plot,bpe,dev,curate,quant,safety}"
stamp="$venv/.herd-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -c1-16) $torch_spec $extras"

if [ ! -x "$venv/bin/python" ]; then
  echo "[herd] creating $venv" >&2
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[herd] installing $torch_spec and herd[$extras] into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$venv/bin/python" -m pip install -q "$torch_spec" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$venv/bin/python" -m pip install -q -e "$root[$extras]" "$torch_spec" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  "$venv/bin/python" -c "import herd, torch" || { echo "[herd] installation failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
