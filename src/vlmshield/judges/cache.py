"""A persistent verdict cache (SQLite, WAL) and the :class:`CachedJudge` wrapper.

Key: ``sha256(canonical judge spec JSON + the item's query, response, category and reference)``. The
spec of an LLM judge includes its template's sha256, parser version, backend name and decoding
settings, so changing any of them never reuses stale verdicts. Cache hits do not call the judge.

Safe across threads and processes: every operation opens its own short-lived connection; the
database runs in WAL mode with a busy timeout, and writes are single ``INSERT OR REPLACE`` statements
inside one transaction. Only JSON is stored (no pickle).

Example:
    >>> from vlmshield.judges import CachedJudge, build_judge
    >>> judge = CachedJudge(build_judge("llm:template=mmsafety,backend=openai,model=gpt-4o-mini"),
    ...                     "runs/verdicts.sqlite")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmshield.errors import UserInputError
from vlmshield.judges.base import Judge, JudgeItem, Verdict, sha256_text, spec_json

SCHEMA_VERSION = 1
_CHUNK = 500


def cache_key(spec: Mapping[str, Any], item: JudgeItem) -> str:
    """The cache key of ``item`` under a judge with ``spec``.

    A judge that sees images (``spec["sees_images"]`` set) also keys on the pixels of the item's
    images; for text-only judges the key is what it always was.
    """
    fields: list[Any] = [item.query, item.response, item.category, item.reference]
    if spec.get("sees_images") and item.images:
        fields.append([image_digest(im) for im in item.images])
    payload = json.dumps(fields, ensure_ascii=False)
    return sha256_text(spec_json(spec) + "\n" + payload)


def image_digest(image: Any) -> str:
    """sha256 of an image's size and RGB pixels (a path is opened with the safety limits)."""
    import hashlib

    from vlmshield.images import as_pil

    im = as_pil(image).convert("RGB")
    h = hashlib.sha256(f"{im.size[0]}x{im.size[1]}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


class VerdictCache:
    """Verdicts stored by key in an SQLite file.

    Args:
        path: the database file (created with its parent folders when missing).
        timeout_s: how long a writer waits for another process's lock before failing.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        if self.path.exists() and self.path.is_dir():
            raise UserInputError(
                f"verdict cache path {self.path} is a folder; pass a file such as {self.path}/verdicts.sqlite"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(
                    "CREATE TABLE IF NOT EXISTS verdicts ("
                    " key TEXT PRIMARY KEY, judge TEXT NOT NULL, verdict TEXT NOT NULL, created REAL NOT NULL)"
                )
                con.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                con.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                row = con.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise UserInputError(
                f"{self.path} is not a usable verdict cache ({e}); delete it or pass another path"
            ) from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise UserInputError(
                f"verdict cache {self.path} has schema {row[0] if row else '?'}, expected {SCHEMA_VERSION}; "
                "delete it or pass another path"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            con.execute("PRAGMA synchronous = NORMAL")
            yield con
        finally:
            con.close()

    def get_many(self, keys: Sequence[str]) -> dict[str, Verdict]:
        """The cached verdicts among ``keys`` (missing keys are absent from the result)."""
        found: dict[str, Verdict] = {}
        uniq = list(dict.fromkeys(keys))
        with self._connect() as con:
            for start in range(0, len(uniq), _CHUNK):
                chunk = uniq[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, data in con.execute(
                    f"SELECT key, verdict FROM verdicts WHERE key IN ({marks})", chunk
                ):
                    found[key] = Verdict.from_dict(json.loads(data))
        return found

    def put_many(self, entries: Mapping[str, Verdict]) -> None:
        """Store verdicts by key (replacing existing ones), in one transaction."""
        if not entries:
            return
        now = time.time()
        rows = [
            (k, v.judge, json.dumps(v.to_dict(), ensure_ascii=False, sort_keys=True), now)
            for k, v in entries.items()
        ]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(
                    "INSERT OR REPLACE INTO verdicts (key, judge, verdict, created) VALUES (?, ?, ?, ?)", rows
                )
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def __len__(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])


class CachedJudge:
    """Wrap a judge so verdicts are read from / written to a :class:`VerdictCache`.

    Only missing items reach the wrapped judge (duplicates within a batch are judged once). ``hits`` and
    ``misses`` count items since construction. With ``retry_unscored=True`` cached unscored verdicts are
    judged again (useful after fixing a judge backend that produced garbage).

    Example:
        >>> cached = CachedJudge(judge, "verdicts.sqlite")  # doctest: +SKIP
        >>> cached.judge(items); cached.judge(items); cached.hits == len(items)  # doctest: +SKIP
    """

    def __init__(
        self, judge: Judge, cache: VerdictCache | str | os.PathLike[str], *, retry_unscored: bool = False
    ) -> None:
        self.inner = judge
        self.cache = cache if isinstance(cache, VerdictCache) else VerdictCache(cache)
        self.retry_unscored = retry_unscored
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        spec = self.inner.spec()
        keys = [cache_key(spec, it) for it in items]
        cached = self.cache.get_many(keys)
        if self.retry_unscored:
            cached = {k: v for k, v in cached.items() if v.scored}
        todo: dict[str, JudgeItem] = {}
        for k, it in zip(keys, items, strict=True):
            if k not in cached and k not in todo:
                todo[k] = it
        fresh: dict[str, Verdict] = {}
        if todo:
            verdicts = self.inner.judge(list(todo.values()))
            if len(verdicts) != len(todo):
                raise RuntimeError(
                    f"judge {self.inner.name} returned {len(verdicts)} verdicts for {len(todo)} items"
                )
            fresh = dict(zip(todo.keys(), verdicts, strict=True))
            self.cache.put_many(fresh)
        with self._lock:
            self.misses += sum(1 for k in keys if k not in cached)
            self.hits += sum(1 for k in keys if k in cached)
        return [cached[k] if k in cached else fresh[k] for k in keys]


__all__ = ["CachedJudge", "VerdictCache", "cache_key"]
