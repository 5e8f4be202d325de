#!/usr/bin/env bash
# Rebuild kjv.jsonl.gz and kjv-heldout.jsonl.gz from Debian's bible-kjv-text package (public-domain
# King James Version text; the `bible` reader program comes from the bible-kjv package). Needs apt
# access to Debian's archive; nothing else. The outputs are committed, so training never needs this.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download bible-kjv-text bible-kjv >/dev/null 2>&1 || { echo "apt-get download failed" >&2; exit 1; }
for deb in *.deb; do dpkg-deb -x "$deb" root; done
# One line per verse ("  N text"), a "Book C" header line before each chapter.
./root/usr/bin/bible -p root/usr/lib -l100000 "gen1:1-rev22:21" > kjv.txt
python3 "$here/to_jsonl.py" kjv.txt "$here"
ls -l "$here"/*.jsonl.gz
