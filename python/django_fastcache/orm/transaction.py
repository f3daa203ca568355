"""Which tables a transaction in progress has written, and deferring cache writes to its
commit.

A write inside ``atomic()`` marks its table dirty on that connection; reads of a dirty
table neither come from nor go into the cache (the transaction must see its own writes,
which no other process may see yet). A value computed inside an atomic block is stored
only once every open block commits (``on_commit``), so nothing read inside a transaction
that rolls back ever lands in the cache.

Dirtiness is tied to a marker callable in the connection's ``run_on_commit`` list: Django
drops those entries when the transaction (or the savepoint they were added in) rolls
back, so a rolled-back write stops making its table dirty without a hook of our own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from django.db import connections, transaction

__all__ = ["any_dirty", "dirty_tables", "in_atomic", "mark_dirty", "maybe_dirty",
           "store_after_commit"]


# The aliases this thread has marked dirty, so that the common case (nothing written in
# a transaction) costs one attribute read.
_marked = threading.local()

# Every mark that may still be live in this process, to its connection. While it is empty
# (no transaction anywhere has written through the ORM) a cached read skips the
# transaction checks with one truth test. A mark leaves on commit (it is called) or when a
# check finds it dropped by a rollback (_prune).
_live: dict = {}


class _Marker:
    __slots__ = ()

    def __call__(self) -> None:
        """Run on commit: its presence in run_on_commit was the signal; now it is over."""
        _live.pop(self, None)


def _alive(conn, marker) -> bool:
    return any(entry[1] is marker for entry in conn.run_on_commit)


def mark_dirty(using: str, tables: Iterable[str]) -> None:
    conn = connections[using]
    if not conn.in_atomic_block:
        return
    state = conn.__dict__.setdefault("_fastcache_dirty", {})
    aliases = getattr(_marked, "aliases", None)
    if aliases is None:
        aliases = _marked.aliases = set()
    aliases.add(using)
    for table in tables:
        marker = state.get(table)
        if marker is None or not _alive(conn, marker):
            marker = state[table] = _Marker()
            transaction.on_commit(marker, using=using)
            _live[marker] = conn


def maybe_dirty() -> bool:
    """False when no open transaction in this process has written (O(1), no connection
    lookup); True means "ask dirty_tables"."""
    if not _live:
        return False
    _prune()
    return bool(_live)


def _prune() -> None:
    # Marks of committed transactions left on their own; a rollback drops its marks from
    # run_on_commit without telling anyone: those whose connection has left its atomic
    # block are dropped here (one flag read each, on any thread's connection). A mark
    # that a savepoint rollback dropped inside a transaction still open stays until that
    # transaction ends or dirty_tables() looks at its connection: meanwhile reads take
    # the per-connection check, which is exact.
    for marker, conn in list(_live.items()):
        if not conn.in_atomic_block:
            _live.pop(marker, None)


def dirty_tables(using: str) -> set[str]:
    if not _live:
        return set()
    conn = connections[using]
    state = conn.__dict__.get("_fastcache_dirty")
    if not state:
        return set()
    if not conn.in_atomic_block:
        for m in state.values():
            _live.pop(m, None)
        state.clear()
        return set()
    live = {t for t, m in state.items() if _alive(conn, m)}
    for t in set(state) - live:
        _live.pop(state.pop(t), None)
    return live


def _initialized():
    return connections.all(initialized_only=True)


def any_dirty() -> bool:
    """Whether some open transaction (on any database) has written."""
    aliases = getattr(_marked, "aliases", None)
    if not aliases or not _live:
        return False
    for alias in list(aliases):
        if dirty_tables(alias):
            return True
        aliases.discard(alias)
    return False


def in_atomic() -> bool:
    return any(c.in_atomic_block for c in _initialized())


def store_after_commit(store: Callable[[], None]) -> None:
    """Runs ``store`` now outside transactions, else once every database's open atomic
    block has committed; never if one rolls back."""
    pending = [c.alias for c in _initialized() if c.in_atomic_block]
    if not pending:
        store()
        return

    def step(i: int = 0) -> None:
        while i < len(pending) and not connections[pending[i]].in_atomic_block:
            i += 1
        if i == len(pending):
            store()
        else:
            transaction.on_commit(lambda: step(i + 1), using=pending[i])

    step()
