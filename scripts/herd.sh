#!/usr/bin/env bash
# Run any `herd` command in the project's environment, creating it first if needed:
#   bash scripts/herd.sh chat --model DIR
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec herd "$@"
