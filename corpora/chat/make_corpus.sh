#!/usr/bin/env bash
# The bundled chat model's SFT data: chatterbot-corpus 1.2.0's English conversations
# (BSD-3-Clause, PyPI), as herd chat JSON Lines; every 20th conversation is held out.
#   bash corpora/chat/make_corpus.sh     # writes corpora/chat/chatterbot.jsonl.gz and chatterbot-heldout.jsonl.gz
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip download --no-deps -q -d "$work" chatterbot-corpus==1.2.0
(cd "$work" && python -m zipfile -e chatterbot_corpus-1.2.0-py2.py3-none-any.whl unpacked)
python "$here/to_jsonl.py" "$work/unpacked/chatterbot_corpus/data/english" "$here"
