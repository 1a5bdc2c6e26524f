"""Data-parallel runs under ``torchrun`` or ``accelerate launch``: this process's rank, and the few
messages ranks exchange.

The launchers start the processes and set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (on every node of a multi-node job too);
:func:`context` reads them and joins a **gloo** process group (``torch.distributed``, env://). Only
small Python objects travel over it (the list of units, status lines, per-rank counts), so gloo serves
on CPUs and GPUs alike and no GPU memory is spent on it. Without a launcher (or with one process), the
context is a single process and nothing is initialised.

A rank that dies (killed, out of memory, an exception) ends the run: the launcher stops the other
ranks and exits non-zero, and a rank waiting on a message from it raises :class:`RankFailed` naming
the step. Everything already written is kept; re-running the same command (with any number of ranks)
finishes the run.

Example:
    >>> ctx = context()          # torchrun --nproc-per-node 2 ...: rank 0 or 1 of 2
    >>> ctx.rank, ctx.world_size  # doctest: +SKIP
    (0, 2)
    >>> ctx.broadcast({"units": 3}, "sending the units")  # rank 0's object on every rank  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any

from vlmshield.errors import UserInputError, VlmshieldError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 10800.0


class RankFailed(VlmshieldError):
    """Another rank stopped (or never answered) while this one waited for it."""


class StoppedByMain(VlmshieldError):
    """A rank other than 0 stops because rank 0 refused the run (rank 0 prints the reason)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserInputError(
            f"{name}={raw!r} is not a number; is this a torchrun / accelerate launch?"
        ) from None


@dataclass
class DistContext:
    """One process of a run: its ``rank`` of ``world_size``, and ``local_rank`` of ``local_world_size``
    on its node. ``group`` is the gloo process group (None for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    group: Any = None
    owns_default_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _fail(self, what: str, e: BaseException) -> RankFailed:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return RankFailed(
            f"rank {self.rank} of {self.world_size}: another rank stopped while {what} ({detail[:200]}); "
            "the batches written so far are kept: re-run the same command to finish the run"
        )

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank (``what`` names the step in the error if a rank is gone)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group)
        except Exception as e:  # gloo: connection closed / timed out
            raise self._fail(what, e) from None
        return box[0]

    def gather(self, obj: Any, what: str) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); ``None`` on the others. Waits for all."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        try:
            dist.gather_object(obj, out, dst=0, group=self.group)
        except Exception as e:
            raise self._fail(what, e) from None
        return out

    def close(self) -> None:
        """Leave the process group (when this context made it)."""
        if not self.distributed or self.group is None:
            return
        import torch.distributed as dist

        try:
            # leave together: a rank that tears gloo down while a peer still uses the group can
            # abort the process ("terminate called without an active exception")
            dist.barrier(group=self.group)
            if self.owns_default_group:
                dist.destroy_process_group()
            else:
                dist.destroy_process_group(self.group)
        except Exception:  # a peer already gone: nothing left to tidy
            pass
        self.group = None


_CURRENT: DistContext | None = None


def launched_world_size() -> int:
    """``WORLD_SIZE`` as a launcher set it (1 without a launcher)."""
    return _env_int("WORLD_SIZE", 1)


def launched_rank() -> int:
    """``RANK`` as a launcher set it (0 without a launcher)."""
    return _env_int("RANK", 0) if launched_world_size() > 1 else 0


def context(timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """This process's :class:`DistContext`, joining the launcher's process group on first use.

    A process group that the caller already made (e.g. ``accelerate``'s ``PartialState``) is reused
    through a gloo subgroup of the same ranks.
    """
    global _CURRENT
    if _CURRENT is not None and (_CURRENT.group is not None or not _CURRENT.distributed):
        return _CURRENT
    world = launched_world_size()
    if world <= 1:
        _CURRENT = DistContext()
        return _CURRENT
    rank = _env_int("RANK", -1)
    if not 0 <= rank < world:
        raise UserInputError(
            f"RANK={os.environ.get('RANK')!r} outside 0..{world - 1}; start through torchrun"
        )
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    import torch.distributed as dist

    timeout = _dt.timedelta(seconds=timeout_s)
    owns = False
    group: Any
    try:
        if not dist.is_initialized():
            dist.init_process_group(
                "gloo", init_method="env://", rank=rank, world_size=world, timeout=timeout
            )
            owns = True
            group = dist.group.WORLD
        elif dist.get_backend() == "gloo":
            group = dist.group.WORLD
        else:
            group = dist.new_group(backend="gloo", timeout=timeout)
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RankFailed(
            f"rank {rank} of {world}: could not join the other ranks ({detail[:200]}); check MASTER_ADDR / "
            "MASTER_PORT and that every rank started"
        ) from None
    _CURRENT = DistContext(rank, world, local_rank, local_world, group, owns)
    return _CURRENT


def current() -> DistContext:
    """The context :func:`context` made, else a single process (never initialises anything)."""
    return _CURRENT if _CURRENT is not None else DistContext()


def release() -> None:
    """Close and forget the current context (the end of a run)."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
    _CURRENT = None


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_KEYS",
    "DistContext",
    "RankFailed",
    "StoppedByMain",
    "context",
    "current",
    "launched_rank",
    "launched_world_size",
    "release",
]
