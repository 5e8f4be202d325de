"""The `bible` program's dump -> one JSON Lines document per chapter (verse numbers dropped).

    python to_jsonl.py kjv.txt OUT_DIR   # writes OUT_DIR/kjv.jsonl.gz, OUT_DIR/kjv-heldout.jsonl.gz

Every 40th chapter (1,189 in all: 30 of them) is held out for measuring the model's loss.
"""

import gzip
import json
import re
import sys
from pathlib import Path

HEADER = re.compile(r"^(\S.*\S) (\d+)$")  # "Genesis 1", "1 Samuel 3", "Song of Solomon 2"
VERSE = re.compile(r"^\s+\d+ (.*)$")


def chapters(lines):
    book = chapter = None
    verses: list[str] = []
    for line in lines:
        line = line.rstrip("\n")
        if m := HEADER.match(line):
            if verses:
                yield book, chapter, verses
            book, chapter, verses = m.group(1), int(m.group(2)), []
        elif m := VERSE.match(line):
            verses.append(m.group(1).strip())
        elif line.strip():
            raise ValueError(f"unexpected line: {line!r}")
    if verses:
        yield book, chapter, verses


def main(src: str, out_dir: str) -> None:
    out = Path(out_dir)
    train = gzip.open(out / "kjv.jsonl.gz", "wt", encoding="utf-8", compresslevel=9)
    heldout = gzip.open(out / "kjv-heldout.jsonl.gz", "wt", encoding="utf-8", compresslevel=9)
    n = verses = 0
    with open(src, encoding="utf-8") as f, train, heldout:
        for n, (book, chapter, lines) in enumerate(chapters(f), start=1):
            record = {"id": f"{book} {chapter}", "text": f"{book} {chapter}\n\n" + "\n".join(lines),
                      "meta": {"book": book, "chapter": chapter, "source": "kjv"}}
            (heldout if n % 40 == 0 else train).write(json.dumps(record, ensure_ascii=False) + "\n")
            verses += len(lines)
    print(f"{n} chapters, {verses} verses")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
