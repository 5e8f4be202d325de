#!/usr/bin/env bash
# Create the environment if needed, lint, and run the default (fast) test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the long tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$root"
ruff check src tests benchmarks
python -m pytest "$@"
