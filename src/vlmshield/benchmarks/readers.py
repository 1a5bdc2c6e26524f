"""Reading benchmark files: text, JSON (entry by entry, with locations), JSON Lines and CSV, field
helpers, and the :class:`ProblemLog` that records what could not be used.

Every problem is one line, ``file:line[:column]: [entry: ]what is wrong``. Entries of one-line JSON
files (VLGuard's ``test.json``) all sit on line 1, so problems also name the entry: ``entry [37]`` (an
array index, with the entry's id when it has one) or ``entry 'q12'`` (an object key). JSON syntax errors
give the column.

What is skipped is counted as *samples lost* per file (:attr:`ProblemLog.lost`): one per bad row (or
the number of samples the row would have given), and, for a file that cannot be read at all, the
entries read before the break (a lower bound; the file is listed in :attr:`ProblemLog.unreadable`).

Policies (``on_error``):

- ``"skip_rows"`` (default): bad rows are reported and skipped; a file that cannot be read raises;
- ``"skip"``: unreadable files are skipped too (their samples counted as lost);
- ``"raise"``: the first problem raises :class:`~vlmshield.errors.UserInputError`.

Example:
    >>> [(e.key, e.index, e.line) for e in json_entries('[\\n{"a": 1},\\n{"a": 2}\\n]', "f.json")]
    [(0, 0, 2), (1, 1, 3)]
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vlmshield.errors import UserInputError

__all__ = [
    "JsonEntry",
    "OnError",
    "ProblemLog",
    "iter_csv",
    "iter_jsonl",
    "json_entries",
    "read_text",
    "require",
    "str_field",
    "text_field",
]

OnError = Literal["skip_rows", "skip", "raise"]
ON_ERROR: tuple[OnError, ...] = ("skip_rows", "skip", "raise")
_SKIP_HINT = "pass --skip-bad (on_error='skip') to go on without it and count its samples as lost"


class ProblemLog:
    """Collects problems met while loading and the samples they cost, per file (see the module
    docstring for ``on_error``)."""

    def __init__(self, on_error: OnError = "skip_rows") -> None:
        if on_error not in ON_ERROR:
            raise UserInputError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
        self.on_error = on_error
        self.problems: list[str] = []
        #: samples lost per file (bad rows, missing images, unreadable files)
        self.lost: dict[str, int] = {}
        #: files skipped whole because they could not be read (their ``lost`` count is a lower bound)
        self.unreadable: list[str] = []
        #: things that are not lost samples but that a user must know (shown as warnings)
        self.warnings: list[str] = []

    def _count(self, file: str | Path, lost: int) -> None:
        if lost:
            self.lost[str(file)] = self.lost.get(str(file), 0) + lost

    def report(
        self,
        file: str | Path,
        line: int | None,
        message: str,
        *,
        entry: str | None = None,
        column: int | None = None,
        lost: int = 1,
    ) -> None:
        """A bad row: ``file:line[:column]: [entry: ]message``, costing ``lost`` samples."""
        where = f"{file}:{line}" if line is not None else f"{file}"
        if line is not None and column is not None:
            where += f":{column}"
        text = f"{where}: {entry}: {message}" if entry else f"{where}: {message}"
        if self.on_error == "raise":
            raise UserInputError(text + " (pass on_error='skip_rows' to skip bad rows)")
        self.problems.append(text)
        self._count(file, lost)

    def unreadable_file(self, file: str | Path, error: UserInputError, *, seen: int = 0) -> None:
        """A whole file cannot be read (truncated, corrupt, not UTF-8): raises a one-line error unless
        ``on_error="skip"``; then the file's samples are lost (``seen``: how many were read before the
        break, counted as the lower bound)."""
        if self.on_error != "skip":
            raise UserInputError(
                f"{error}; the whole file cannot be used: fix or re-download it, or {_SKIP_HINT}"
            ) from None
        self.problems.append(str(error))
        self.unreadable.append(str(file))
        self.lost[str(file)] = self.lost.get(str(file), 0) + seen

    def warn(self, message: str) -> None:
        """Something the user must see that loses no sample (e.g. data that looks like another set)."""
        self.warnings.append(message)

    def image(
        self, file: str | Path, line: int | None, image: Path, *, entry: str | None = None, lost: int = 1
    ) -> bool:
        """Report a missing or empty image file; return whether it is usable."""
        try:
            st = image.stat()
        except OSError:
            self.report(file, line, f"image not found: {image}", entry=entry, lost=lost)
            return False
        if not image.is_file():
            self.report(file, line, f"image path is not a file: {image}", entry=entry, lost=lost)
            return False
        if st.st_size == 0:
            self.report(file, line, f"image file is empty: {image}", entry=entry, lost=lost)
            return False
        return True


# ------------------------------------------------------------------------------------------- files


def read_text(path: Path) -> str:
    """Read a UTF-8 text file with a one-line error if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserInputError(f"cannot read {path}: {e.strerror or e}") from None


@dataclass(frozen=True)
class JsonEntry:
    """One top-level entry of a JSON object or array, with where it starts in the file."""

    key: str | int  #: the object key, or the array index
    value: Any
    line: int  #: 1-based line of the entry's first character
    column: int  #: 1-based column of the entry's first character
    index: int  #: 0-based position among the top-level entries

    def describe(self, *, id: str | None = None, noun: str = "entry") -> str:
        """``entry [3]`` / ``entry [3] (id 'x')`` for array entries, ``entry 'q12'`` for object entries."""
        if isinstance(self.key, str):
            return f"{noun} {self.key!r}"
        return f"{noun} [{self.index}]" + (f" (id {id!r})" if id is not None else "")


class _Cursor:
    """Line and column of increasing positions in ``text``: counts newlines only between the previous
    position and the next, so walking a file costs one pass over it in total."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.line_start = 0

    def at(self, i: int) -> tuple[int, int]:
        if i < self.pos:  # pragma: no cover - positions only increase
            raise ValueError("positions must increase")
        nl = self.text.count("\n", self.pos, i)
        if nl:
            self.line += nl
            self.line_start = self.text.rfind("\n", self.pos, i) + 1
        self.pos = i
        return self.line, i - self.line_start + 1


def json_entries(text: str, file: str | Path) -> Iterator[JsonEntry]:
    """Yield each top-level entry of a JSON object or array with its location, in one pass.

    Raises :class:`UserInputError` ``file:line:column: invalid JSON ...`` (naming the entry it was in)
    when the text is not valid JSON; the entries before the error have been yielded by then.
    """
    dec = json.JSONDecoder()
    n = len(text)
    cursor = _Cursor(text)

    def ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def bad(i: int, what: str) -> UserInputError:
        line, col = cursor.at(i)
        return UserInputError(f"{file}:{line}:{col}: invalid JSON: {what}")

    def value(i: int, name: str) -> tuple[Any, int]:
        try:
            return dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{file}:{e.lineno}:{e.colno}: invalid JSON in {name}: {e.msg}") from None

    i = ws(1 if text.startswith("\ufeff") else 0)
    if i >= n or text[i] not in "{[":
        raise bad(i, "expected a JSON object or array at the top level")
    is_obj = text[i] == "{"
    close = "}" if is_obj else "]"
    i = ws(i + 1)
    if i < n and text[i] == close:
        return
    index = 0
    last: str | int = ""
    while True:
        start = i
        key: str | int
        if is_obj:
            if i >= n or text[i] != '"':
                raise bad(i, "expected a quoted key" + (f" after entry {last!r}" if index else ""))
            k, i = value(i, f"the key of entry {index}")
            key = str(k)
            i = ws(i)
            if i >= n or text[i] != ":":
                raise bad(i, f"expected ':' after the key {key!r}")
            i = ws(i + 1)
            name = f"entry {key!r}"
        else:
            key = index
            name = f"entry [{index}]"
        v, i = value(i, name)
        line, col = cursor.at(start)
        yield JsonEntry(key, v, line, col, index)
        last = key if is_obj else index
        index += 1
        i = ws(i)
        if i < n and text[i] == ",":
            i = ws(i + 1)
            continue
        if i < n and text[i] == close:
            return
        after = f"entry {key!r}" if is_obj else f"entry [{key}]"
        raise bad(i, f"expected ',' or '{close}' after {after}")


def iter_jsonl(path: Path, log: ProblemLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of a JSON Lines file; bad lines are reported."""
    for n, raw in enumerate(read_text(path).splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            log.report(path, n, f"invalid JSON: {e.msg}", column=e.colno)
            continue
        if not isinstance(row, dict):
            log.report(path, n, "each line must be a JSON object")
            continue
        yield n, row


def iter_csv(path: Path, columns: Sequence[str], log: ProblemLog) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` for each row of a CSV file with a header; rows with extra fields are reported.

    A header without one of ``columns`` raises :class:`UserInputError` (``file:1``). ``line`` is the
    physical line where the row ends (the header is line 1).
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise UserInputError(
            f"{path}:1: missing column(s) {', '.join(missing)} (header: {', '.join(reader.fieldnames or [])})"
        )
    for row in reader:
        line = reader.line_num
        extra = row.pop(None, None)  # type: ignore[call-overload]
        if extra:
            log.report(path, line, f"{len(extra)} more field(s) than the header (unquoted comma?)")
            continue
        yield line, {k: v for k, v in row.items() if k is not None}


# ------------------------------------------------------------------------------------------ fields


def str_field(row: Mapping[str, Any], key: str) -> str | None:
    """``row[key]`` as a stripped non-empty string, else ``None`` (for ids, names and categories)."""
    v = row.get(key)
    if v is None:
        return None
    if not isinstance(v, str | int | float):
        return None
    s = str(v).strip()
    return s or None


def text_field(row: Mapping[str, Any], key: str) -> str | None:
    """``row[key]`` exactly as published (not stripped) when it is a string that is not blank, else
    ``None`` (for queries: leading and trailing whitespace is part of some prompts)."""
    v = row.get(key)
    if isinstance(v, str) and v.strip():
        return v
    return None


def require(
    row: Mapping[str, Any], keys: Sequence[str], log: ProblemLog, file: Path, line: int
) -> dict[str, str] | None:
    """The non-empty string fields ``keys`` of ``row`` (stripped); reports the missing ones and returns
    ``None``."""
    out: dict[str, str] = {}
    missing = []
    for k in keys:
        v = str_field(row, k)
        if v is None:
            missing.append(k)
        else:
            out[k] = v
    if missing:
        log.report(file, line, f"missing or empty field(s): {', '.join(missing)}")
        return None
    return out
