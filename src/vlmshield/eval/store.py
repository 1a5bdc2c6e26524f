"""The run database: one SQLite file (stdlib ``sqlite3``, WAL) per run directory.

Tables:

- ``samples``: the run's samples in evaluation order (``idx``), with benchmark, category and label;
- ``generations``: one row per (defense, sample): answer text, token ids and counts, cost, the
  defense's ``details`` (JSON), the benchmark's judge-free score, or the error that stopped it;
- ``verdicts``: one row per (defense, sample, judge): label, ``unsafe`` / ``refused`` flags, score,
  the full verdict (JSON), or the judge's error.

Every write is one transaction, so a killed process leaves whole batches or nothing; primary keys
make a duplicate row impossible. Only JSON and plain columns are stored (never pickle).

Example:
    >>> store = RunStore("runs/x/results.sqlite")  # doctest: +SKIP
    >>> store.done_pairs()  # doctest: +SKIP
    {('none', 'mini/vlsafe/harm-weapons-01'), ...}
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY,
    sample_id TEXT NOT NULL UNIQUE,
    benchmark TEXT NOT NULL,
    category TEXT NOT NULL,
    label TEXT NOT NULL,
    query TEXT NOT NULL,
    answer TEXT,
    num_images INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS generations (
    defense TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    text TEXT,
    token_ids TEXT,
    num_tokens INTEGER,
    forward_passes INTEGER,
    prompt_tokens INTEGER,
    new_tokens INTEGER,
    calls INTEGER,
    wall_time_s REAL,
    cost TEXT,
    details TEXT,
    score REAL,
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (defense, sample_id)
);
CREATE TABLE IF NOT EXISTS verdicts (
    defense TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    judge TEXT NOT NULL,
    label TEXT,
    unsafe INTEGER,
    refused INTEGER,
    score REAL,
    unscored_reason TEXT,
    verdict TEXT,
    error TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (defense, sample_id, judge)
);
"""

#: Columns of ``generations`` / ``verdicts`` that do not depend on timing (what a resumed run must
#: reproduce exactly).
GENERATION_RESULT_COLUMNS = (
    "defense",
    "sample_id",
    "idx",
    "batch",
    "text",
    "token_ids",
    "num_tokens",
    "forward_passes",
    "prompt_tokens",
    "new_tokens",
    "calls",
    "score",
    "error",
)
VERDICT_RESULT_COLUMNS = (
    "defense",
    "sample_id",
    "judge",
    "label",
    "unsafe",
    "refused",
    "score",
    "verdict",
    "error",
)


def to_json(obj: Any) -> str:
    """Canonical JSON (sorted keys); values JSON does not know (paths, numpy, tensors) become strings."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_default)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


@dataclass
class GenerationRow:
    """What the runner writes for one (defense, sample)."""

    defense: str
    sample_id: str
    idx: int
    batch: int
    text: str | None = None
    token_ids: list[int] | None = None
    cost: dict[str, float] | None = None
    wall_time_s: float | None = None
    details: dict[str, Any] | None = None
    score: float | None = None
    error: str | None = None


@dataclass
class VerdictRow:
    """What the runner writes for one (defense, sample, judge)."""

    defense: str
    sample_id: str
    judge: str
    verdict: dict[str, Any] | None = None
    error: str | None = None


class RunStore:
    """The SQLite results of one run directory (see the module docstring).

    Args:
        path: the database file (created with its folder when missing).
        timeout_s: how long to wait for another connection's write lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserInputError(f"{self.path} is a folder; the run database is a file ({DB_NAME})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        self.con.row_factory = sqlite3.Row
        try:
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=NORMAL")
            self.con.executescript(_SCHEMA)
            self.con.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            self.con.close()
            raise UserInputError(
                f"{self.path} is not a usable run database ({e}); pass a new --output-dir"
            ) from None
        if int(row[0]) != SCHEMA_VERSION:
            self.con.close()
            raise UserInputError(
                f"{self.path} has schema {row[0]}, this vlmshield writes {SCHEMA_VERSION}; pass a new --output-dir"
            )

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on any exception)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # ------------------------------------------------------------------ samples
    def put_samples(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record the run's samples in order; a run database that already holds a different sample
        list is an error (the manifest check normally catches this first)."""
        existing = [r["sample_id"] for r in self.con.execute("SELECT sample_id FROM samples ORDER BY idx")]
        wanted = [r["sample_id"] for r in rows]
        if existing:
            if existing != wanted:
                raise UserInputError(f"{self.path} holds a different sample list; pass a new --output-dir")
            return
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO samples (idx, sample_id, benchmark, category, label, query, answer, num_images)"
                " VALUES (:idx, :sample_id, :benchmark, :category, :label, :query, :answer, :num_images)",
                rows,
            )

    def samples(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.con.execute("SELECT * FROM samples ORDER BY idx")]

    # ------------------------------------------------------------------ generations
    def done_pairs(self, *, include_errors: bool = True) -> set[tuple[str, str]]:
        """(defense, sample_id) pairs that have a generation row (optionally only error-free ones)."""
        sql = "SELECT defense, sample_id FROM generations"
        if not include_errors:
            sql += " WHERE error IS NULL"
        return {(r[0], r[1]) for r in self.con.execute(sql)}

    def delete_generation_errors(self) -> int:
        """Remove the generation rows that hold an error (to run them again); returns how many."""
        with self.transaction() as con:
            cur = con.execute("DELETE FROM generations WHERE error IS NOT NULL")
        return int(cur.rowcount)

    def add_generations(self, rows: Iterable[GenerationRow]) -> None:
        """Insert the rows in one transaction (a (defense, sample) that already has a row is an error)."""
        now = time.time()
        values = []
        for r in rows:
            cost = r.cost or {}
            values.append(
                (
                    r.defense,
                    r.sample_id,
                    r.idx,
                    r.batch,
                    r.text,
                    None if r.token_ids is None else to_json(list(r.token_ids)),
                    None if r.token_ids is None else len(r.token_ids),
                    _int_or_none(cost.get("forward_passes")),
                    _int_or_none(cost.get("prompt_tokens")),
                    _int_or_none(cost.get("new_tokens")),
                    _int_or_none(cost.get("calls")),
                    r.wall_time_s,
                    None if r.cost is None else to_json(r.cost),
                    None if r.details is None else to_json(r.details),
                    r.score,
                    r.error,
                    now,
                )
            )
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO generations (defense, sample_id, idx, batch, text, token_ids, num_tokens,"
                " forward_passes, prompt_tokens, new_tokens, calls, wall_time_s, cost, details, score,"
                " error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def generations(self) -> list[dict[str, Any]]:
        """All generation rows in insertion order (JSON columns decoded)."""
        out = []
        for r in self.con.execute("SELECT * FROM generations ORDER BY rowid"):
            d = dict(r)
            for key in ("token_ids", "cost", "details"):
                if d[key] is not None:
                    d[key] = json.loads(d[key])
            out.append(d)
        return out

    # ------------------------------------------------------------------ verdicts
    def pending_judgements(self, judge: str) -> list[dict[str, Any]]:
        """Error-free generations that have no verdict row from ``judge`` yet, in evaluation order,
        with the sample's query, category and reference answer."""
        sql = (
            "SELECT g.defense, g.sample_id, g.text, s.query, s.category, s.answer FROM generations g"
            " JOIN samples s ON s.sample_id = g.sample_id"
            " LEFT JOIN verdicts v ON v.defense = g.defense AND v.sample_id = g.sample_id AND v.judge = ?"
            " WHERE g.error IS NULL AND v.sample_id IS NULL ORDER BY g.rowid"
        )
        return [dict(r) for r in self.con.execute(sql, (judge,))]

    def delete_verdict_errors(self) -> int:
        with self.transaction() as con:
            cur = con.execute("DELETE FROM verdicts WHERE error IS NOT NULL")
        return int(cur.rowcount)

    def add_verdicts(self, rows: Iterable[VerdictRow]) -> None:
        now = time.time()
        values = []
        for r in rows:
            v = r.verdict or {}
            values.append(
                (
                    r.defense,
                    r.sample_id,
                    r.judge,
                    v.get("label"),
                    _bool_or_none(v.get("unsafe")),
                    _bool_or_none(v.get("refused")),
                    v.get("score"),
                    v.get("unscored_reason"),
                    None if r.verdict is None else to_json(r.verdict),
                    r.error,
                    now,
                )
            )
        with self.transaction() as con:
            con.executemany(
                "INSERT INTO verdicts (defense, sample_id, judge, label, unsafe, refused, score,"
                " unscored_reason, verdict, error, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )

    def verdicts(self) -> list[dict[str, Any]]:
        out = []
        for r in self.con.execute("SELECT * FROM verdicts ORDER BY rowid"):
            d = dict(r)
            for key in ("unsafe", "refused"):
                d[key] = None if d[key] is None else bool(d[key])
            if d["verdict"] is not None:
                d["verdict"] = json.loads(d["verdict"])
            out.append(d)
        return out

    def result_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The timing-free columns of every generation and verdict, sorted by key: what two runs of the
        same plan (one of them interrupted and resumed) must agree on."""
        g = self.con.execute(
            f"SELECT {', '.join(GENERATION_RESULT_COLUMNS)}, details FROM generations ORDER BY defense, idx"
        ).fetchall()
        gens = [(*tuple(r)[:-1], to_json(_strip_timing(json.loads(r[-1]) if r[-1] else None))) for r in g]
        v = self.con.execute(
            f"SELECT {', '.join(VERDICT_RESULT_COLUMNS)} FROM verdicts ORDER BY defense, sample_id, judge"
        ).fetchall()
        return gens, [tuple(r) for r in v]

    # ------------------------------------------------------------------ merging (per-rank part files)
    def raw_rows(self, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and every row of ``generations`` or ``verdicts`` as stored (JSON undecoded)."""
        if table not in ("generations", "verdicts"):
            raise ValueError(f"no table {table!r} to copy")
        cur = self.con.execute(f"SELECT * FROM {table} ORDER BY rowid")
        return [c[0] for c in cur.description], [tuple(r) for r in cur.fetchall()]

    def insert_raw(
        self, con: sqlite3.Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> int:
        """Insert rows read by :meth:`raw_rows` inside the caller's :meth:`transaction`; a row whose key
        is already present is skipped (it is the same row). Returns how many were inserted."""
        if table not in ("generations", "verdicts"):
            raise ValueError(f"no table {table!r} to copy into")
        if not rows:
            return 0
        names = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        before = con.total_changes
        con.executemany(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})", rows)
        return int(con.total_changes - before)

    def counts(self) -> dict[str, int]:
        q = self.con.execute
        return {
            "samples": int(q("SELECT COUNT(*) FROM samples").fetchone()[0]),
            "generations": int(q("SELECT COUNT(*) FROM generations").fetchone()[0]),
            "generation_errors": int(
                q("SELECT COUNT(*) FROM generations WHERE error IS NOT NULL").fetchone()[0]
            ),
            "verdicts": int(q("SELECT COUNT(*) FROM verdicts").fetchone()[0]),
        }


def _strip_timing(obj: Any) -> Any:
    """``obj`` without ``wall_time_s`` keys (anywhere), which differ between any two runs."""
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k != "wall_time_s"}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _int_or_none(x: Any) -> int | None:
    return None if x is None else int(x)


def _bool_or_none(x: Any) -> int | None:
    return None if x is None else int(bool(x))


__all__ = [
    "DB_NAME",
    "GENERATION_RESULT_COLUMNS",
    "SCHEMA_VERSION",
    "VERDICT_RESULT_COLUMNS",
    "GenerationRow",
    "RunStore",
    "VerdictRow",
    "to_json",
]
