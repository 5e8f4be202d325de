"""chatterbot-corpus YAML conversations -> herd chat JSON Lines (gzip), every 20th held out.

Each conversation is a list of lines said in turn: the first is the user's, the next the
assistant's, and so on; a conversation that ends on a user line loses that line. Needs
PyYAML (``pip install pyyaml``), this script only.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def conversations(path: Path) -> list[list[str]]:
    import yaml  # PyYAML: only this script needs it

    return [[str(line) for line in conv] for conv in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]]


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    train, held = [], []
    i = 0
    for path in sorted(source.glob("*.yml")):
        for conv in conversations(path):
            turns = conv[: len(conv) - len(conv) % 2]
            if not turns:
                continue
            messages = [{"role": "user" if j % 2 == 0 else "assistant", "content": t} for j, t in enumerate(turns)]
            (held if i % 20 == 19 else train).append({"messages": messages, "source": path.stem})
            i += 1
    for name, rows in (("chatterbot.jsonl.gz", train), ("chatterbot-heldout.jsonl.gz", held)):
        with gzip.open(out / name, "wt", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{name}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
