"""Reading JSON Lines files (corpus manifests, caption tables, a run's metrics): one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.errors import BadInput


def read_jsonl(path: Path | str, *, tolerate_torn_tail: bool) -> list[dict]:
    """The objects of a JSON Lines file, skipping blank lines; BadInput names the first line that is not one.

    With `tolerate_torn_tail`, a last line that has no newline and does not parse is dropped: that is
    what a kill in the middle of an append leaves behind, in files we append to while working.
    """
    return [record for _, record in read_jsonl_numbered(path, tolerate_torn_tail=tolerate_torn_tail)]


def read_jsonl_numbered(path: Path | str, *, tolerate_torn_tail: bool) -> list[tuple[int, dict]]:
    """As `read_jsonl`, each object with its line number (from 1), for messages about a line's content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"'{path}' is not UTF-8 text; save it as UTF-8 JSON Lines.") from None
    lines = text.split("\n")  # a complete file ends in "\n", so its last piece is ""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if tolerate_torn_tail and number == len(lines):
                break
            raise BadInput(
                f"Line {number} of '{path}' is not valid JSON; repair or remove that line."
            ) from None
        if not isinstance(record, dict):
            raise BadInput(f"Line {number} of '{path}' is not a JSON object; repair or remove that line.")
        records.append((number, record))
    return records
