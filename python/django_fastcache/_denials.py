"""Denials answered in the process while Redis says the state behind them is unchanged.

A client over its limit is refused again and again until its window moves; each refusal
on Redis costs a round trip (an ``EVALSHA`` that reads the state and writes nothing). A
:class:`DenialMemo` remembers, per Redis key, "denied until *t*" from a denied check's
reply, and answers the same check from the process until *t*, for as long as nothing can
have changed the state:

* The four scripts (``lua/*.lua``) write nothing when they deny, so while a client stays
  denied its key changes only by a ``reset()``, a ``clear()`` (``DEL``, ``FLUSHDB``), its
  expiry, or a check that allows (which cannot happen before *t*).
* Any change is seen: the memo's store runs the native invalidation listener
  (``src/core/listener.*``) in Redis ``BCAST`` tracking mode on the throttle keys' prefix,
  so Redis reports every write, expiry and flush of those keys, whoever makes it; the
  listener drops the entry without the GIL. While the listener is not up (starting,
  reconnecting, Redis down) the store is bypassed and every check asks Redis.
* No stale entry is stored: a denial is kept only under the coherence token taken before
  its ``EVALSHA`` was sent (``src/core/coherence.*``): an invalidation of the key that
  arrived in between refuses the fill.
* Changes are seen as soon as they can be: this process's own ``reset()`` and a
  FastCache's ``clear()`` drop the memo before they return; a change made by any other
  client (another process's reset, a ``FLUSHDB``) is seen once its invalidation reaches
  this process's socket: before answering, the memo asks the listener whether bytes are
  unread or a batch is being applied (one ``poll``), and then asks Redis. That is the
  coherent L1's window (microseconds on an idle host, milliseconds under CPU contention);
  in it a client that was just reset is refused once more, never let through early.
* *t* is measured from before the ``EVALSHA`` was sent, so the memo lets go early (by the
  round trip), never late: a check after that asks Redis, which decides exactly.

Used only where it can hold: a single Redis server over TCP or a Unix socket (not TLS,
Sentinel, Cluster or django-redis's ``ShardClient``, whose connections the listener does
not make), keys of the prefix form ``<prefix>:{<identity>}:...``, and Redis's clock
(a throttle with its own ``timer`` passes ``now``, and then every check asks Redis).
``FASTCACHE_THROTTLE["DENIAL_MEMO"]``: None (the default) uses it on a FastCache, whose
``clear()`` drops it at once; True also on django-redis and Django's RedisCache, whose
``clear()`` (``FLUSHDB``) this process sees only when the invalidation arrives; False
never.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from . import _core

# The native listener's PING cadence (as coherence.py uses for the cache's L1).
_PING_INTERVAL = 1.0
_PONG_DEADLINE = 2.0
# Entries are a few dozen bytes; 4 MiB holds tens of thousands of denied identities,
# and a full store evicts (SIEVE): an evicted denial is asked of Redis again.
_MAX_BYTES = 4 << 20

_memos: dict[tuple, DenialMemo] = {}
_memos_lock = threading.Lock()


class DenialMemo:
    """Denials of one Redis server's throttle keys under one key prefix.

    Thread-safe: the store and its listener are the core's; ``_start`` runs under a lock
    once per process (again in a forked child: the core's fork handler leaves its store
    bypassed and without a thread, this module's empties it and forgets the start)."""

    def __init__(self, endpoint: tuple[str, int, str], username: str, password: str,
                 prefix: str, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.prefix = prefix
        self._auth = (username, password)
        self._connect_timeout = connect_timeout
        self.store = _core.Store(max_bytes=_MAX_BYTES, max_entries=1_000_000,
                                 cull_frequency=3, shards=16)
        self.engine = _core.Engine(store=self.store, key_prefix="", version=1, key_func=None,
                                   default_timeout=300, default_sentinel=object(),
                                   key_warning=UserWarning, codec=_core.Codec(pickle="forbid"))
        self._started = False  # in this process (a forked child starts its own)
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self.store.reset(False)

    def _start(self) -> None:
        with self._lock:
            if self._started or time.monotonic() < self._retry_at:
                return
            self._retry_at = time.monotonic() + 1.0
            username, password = self._auth
            self.store.listener_configure(
                endpoints=[self.endpoint], username=username, password=password,
                prefixes=[self.prefix], connect_timeout=self._connect_timeout,
                ping_interval=_PING_INTERVAL, pong_deadline=_PONG_DEADLINE)
            self.store.listener_start()
            self._started = True

    def get(self, rkey: str, cost: int, limit: int, burst: int) -> tuple[int, int, int] | None:
        """``(remaining, retry_after_us, reset_after_us)`` of a denial of ``cost`` under
        ``limit`` and ``burst`` that still holds for ``rkey``, or None (then the check asks
        Redis). Throttles of one period and algorithm with other limits share a key (as
        they share DRF's history): each is answered only from its own denial."""
        if not self._started:
            self._start()
            return None
        store = self.store
        if not store.usable or store.listener_pending():
            return None
        got = self.engine.l1_get(rkey)
        if got is None or got[0] != cost or got[1] != limit or got[2] != burst:
            return None
        now = time.monotonic()
        left = got[4] - now
        if left <= 0:
            return None
        return got[3], int(left * 1_000_000), max(0, int((got[5] - now) * 1_000_000))

    def token(self, rkey: str) -> int:
        return self.engine.l1_token(rkey)

    def put(self, rkey: str, token: int, cost: int, limit: int, burst: int, remaining: int,
            retry_us: int, reset_us: int, sent: float) -> None:
        """Keeps a denial read under ``token`` (taken before the check was ``sent``, a
        ``time.monotonic()``). A retry of -1 (never: the cost is over the limit) or 0 is
        not kept."""
        if retry_us <= 0:
            return
        seconds = retry_us / 1_000_000
        self.engine.l1_fill(rkey, (cost, limit, burst, remaining, sent + seconds,
                                   sent + reset_us / 1_000_000), seconds, token)

    def forget(self) -> None:
        """Drops every entry now (this process's own reset: not left to the listener)."""
        if self._started:
            self.store.reset(self.store.usable)

    def stats(self) -> dict[str, Any]:
        listener = self.store.listener_stats()
        return {"state": listener["state"], "entries": self.store.stats()["entries"],
                "usable": self.store.usable, "invalidated_keys": listener["keys"],
                "flushes": listener["flushes"]}

    def close(self) -> None:
        """Stops the listener (tests)."""
        with self._lock:
            if self._started:
                self.store.listener_stop()
            self._started = False
            self.store.reset(False)


def _after_fork_in_child() -> None:
    # The core's fork handler has already left each store bypassed, without a thread: the
    # copied entries go, and the child's first check starts its own listener. A lock a
    # parent thread held at fork() stays held in the child: new ones.
    global _memos_lock
    _memos_lock = threading.Lock()
    for memo in _memos.values():
        memo._lock = threading.Lock()
        memo._started = False
        memo._retry_at = 0.0
        memo.store.reset(False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def memo_for(client: Any, make_key: Any, throttle_prefix: str) -> DenialMemo | None:
    """The memo for throttle keys made by ``make_key`` on the server behind ``client``
    (a ``redis.Redis``), or None where it cannot hold (see the module docstring)."""
    from redis.connection import Connection, UnixDomainSocketConnection

    pool = getattr(client, "connection_pool", None)
    if pool is None or pool.connection_class not in (Connection, UnixDomainSocketConnection):
        return None  # TLS, Sentinel or anything else whose connections we do not make
    kw = pool.connection_kwargs
    if pool.connection_class is UnixDomainSocketConnection:
        endpoint = ("", 0, str(kw.get("path") or ""))
    else:
        endpoint = (str(kw.get("host") or "localhost"), int(kw.get("port") or 6379), "")
    # The prefix every throttle key of this cache starts with; a KEY_FUNCTION that does not
    # put its prefix first cannot be tracked by prefix.
    made = make_key if make_key is not None else str
    base = made(f"{throttle_prefix}:")
    for sample in ("{a}:sl:1s", "{zz}:gc:60s"):
        full = made(f"{throttle_prefix}:{sample}")
        if not full.startswith(base) or full[len(base):] != sample:
            return None
    username = kw.get("username") or ""
    password = kw.get("password") or ""
    timeout = kw.get("socket_connect_timeout") or kw.get("socket_timeout") or 1.0
    name = (endpoint, username, password, base, kw.get("db") or 0)
    with _memos_lock:
        memo = _memos.get(name)
        if memo is None:
            memo = _memos[name] = DenialMemo(endpoint, str(username), str(password), base,
                                             float(timeout))
        return memo


def forget_all() -> None:
    """Drops every memo's entries (``limiter.reset()`` of this process)."""
    for memo in list(_memos.values()):
        memo.forget()


def close_all() -> None:
    """Stops every memo's listener (tests)."""
    with _memos_lock:
        memos = list(_memos.values())
        _memos.clear()
    for memo in memos:
        memo.close()
