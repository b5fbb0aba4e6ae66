"""Prompt lists for batches (`soundloom generate --prompts FILE -o DIR/`): one take per line.

A .txt file holds one prompt per line; blank lines and lines starting with '#' are skipped. A .jsonl
file holds one object per line: "prompt" (required) and optionally "seconds", "steps" and "seed" (which
win over the command's flags) and "name" (the take's file name in DIR, without the extension). Other
keys are ignored, so an evaluation prompt file (assets/prompts/dev.jsonl) works as it is. A take without
a name is called NNN-first-words-of-its-prompt, NNN its place in the list.

Everything here is checked before anything is generated; what only the model can judge (the prompt's
text, seconds within the model's window) is checked by the caller through `Generator.settings`, and
`at_line` turns its message into one about the line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import BadInput
from training.jsonl import read_jsonl_numbered

PROMPT_LIST_SUFFIXES = (".txt", ".jsonl")
MAX_NAME_CHARS = 100
SLUG_CHARS = 40


@dataclass(frozen=True)
class PromptLine:
    """One take of a batch: where it is in the file, what to make, and its file name (no extension)."""

    line: int
    prompt: str
    name: str
    seconds: float | None = None
    steps: int | None = None
    seed: int | None = None


def read_prompt_list(path: str | Path) -> list[PromptLine]:
    """The takes a prompt list asks for; BadInput (naming the line) for the first line that is wrong."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROMPT_LIST_SUFFIXES:
        raise BadInput(
            f"Cannot read '{path.name}' as a prompt list; give a .txt file (one prompt per line) or a "
            '.jsonl file (one {"prompt": ...} object per line).'
        )
    if suffix == ".txt":
        entries = [(number, {"prompt": text}) for number, text in _text_lines(path)]
    else:
        entries = read_jsonl_numbered(path, tolerate_torn_tail=False)
    if not entries:
        raise BadInput(f"'{path}' holds no prompts; write one prompt per line.")
    width = max(3, len(str(len(entries))))
    takes, named = [], {}
    for index, (number, entry) in enumerate(entries, start=1):
        take = _take(path, number, entry, f"{index:0{width}d}")
        if take.name.lower() in named:
            raise BadInput(
                f"Lines {named[take.name.lower()]} and {number} of '{path}' both name the take "
                f"'{take.name}'; give each line its own name."
            )
        named[take.name.lower()] = number
        takes.append(take)
    return takes


def at_line(path: str | Path, line: int, error: BadInput) -> BadInput:
    """`error` (one sentence about a prompt or its settings) as a sentence about line `line` of `path`."""
    text = str(error)
    return BadInput(f"Line {line} of '{path}': {text[:1].lower() + text[1:]}")


def _text_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"'{path}' is not UTF-8 text; save it as UTF-8 with one prompt per line.") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((number, line))
    return lines


def _take(path: Path, number: int, entry: dict, place: str) -> PromptLine:
    def wrong(what: str) -> BadInput:
        return BadInput(f"Line {number} of '{path}' {what}; fix or remove that line.")

    prompt = entry.get("prompt")
    if not isinstance(prompt, str):
        raise wrong('has no "prompt" text')
    seconds, steps, seed = entry.get("seconds"), entry.get("steps"), entry.get("seed")
    if seconds is not None and not _is_number(seconds):
        raise wrong(f'has "seconds": {seconds!r}, which is not a number')
    for key, value in (("steps", steps), ("seed", seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise wrong(f'has "{key}": {value!r}, which is not a whole number')
    name = entry.get("name")
    if name is None:
        slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:SLUG_CHARS].strip("-")
        name = f"{place}-{slug}" if slug else place
    elif not _is_file_name(name):
        raise wrong(
            f'has "name": {name!r}, which is not a plain file name (letters, digits, spaces, . _ -; '
            f"at most {MAX_NAME_CHARS} characters; no folders)"
        )
    return PromptLine(number, prompt, name, seconds, steps, seed)


def _is_file_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_CHARS
        and re.fullmatch(r"[\w][\w .\-]*", name) is not None
        and not name.endswith((" ", "."))
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
