"""The one place that holds Redis connections for this package: the cache tier
(:mod:`.redis_tier`) and the rate limiter's Redis store (:mod:`.limiter`) send their
commands through a :class:`Wire`, built over a redis-py client and using only redis-py's
public API (``ConnectionPool.get_connection()``, ``Connection.send_command``,
``send_packed_command``, ``pack_commands``, ``read_response``, ``disconnect``).

Why hold connections: on a single node (or the Sentinel primary) borrowing a connection
from redis-py's pool and going through the client's command path costs more per command
than the round trip to a local server. So each thread keeps one connection of the pool
for itself (handed back when the thread ends) and talks to it directly. A cluster, or a
client with read replicas, goes through redis-py, which routes each command.

One retry policy: a command that failed on a connection error is sent again on a fresh
connection, up to ``retries`` times (``OPTIONS['RETRIES']``); a timeout is retried only
with ``retry_on_timeout``. An error reply is never retried (the server answered).

Fork safety: a child process never touches a connection of its parent. Held connections
are per thread and remember the pid that opened them; at ``os.fork()`` every wire forgets
its connections in the child (the parent's sockets are dropped, never shut down), so
the child's first command opens a connection of its own, once per thread.

Needs redis-py >= 5.3 (``get_connection()`` without a command name).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis import exceptions as _rx

__all__ = ["Script", "Wire"]


class Script:
    """A Lua script and its SHA1, as ``EVALSHA`` needs it (``SCRIPT LOAD`` on NOSCRIPT)."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        import hashlib

        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<Script {self.sha[:8]}>"


class _Held:
    """A connection taken from a pool for one thread; handed back to the pool when the
    thread ends (its thread-local storage is dropped), so short-lived threads leak none."""

    __slots__ = ("pool", "pid", "connection")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.pid = os.getpid()
        self.connection = None  # set first: __del__ runs even if get_connection() raises
        self.connection = pool.get_connection()

    def release(self, _getpid: Callable[[], int] = os.getpid) -> None:
        # (os.getpid bound early: this may run from __del__ at interpreter exit.)
        connection, self.connection = self.connection, None
        if connection is not None and self.pid == _getpid():
            try:
                self.pool.release(connection)
            except Exception:  # the pool may be closed or half torn down at exit
                pass

    def __del__(self) -> None:
        self.release()


def direct_capable(client: Any) -> bool:
    """Whether ``client`` is a plain (or Sentinel-managed) sync client with a pool whose
    connections can be held: not a cluster client, not a single-connection client."""
    return (isinstance(client, redis.Redis)
            and getattr(client, "connection_pool", None) is not None
            and getattr(client, "connection", None) is None)


class Wire:
    """Sends commands to one Redis deployment; see the module docstring.

    ``client_for(write)`` returns the redis-py client for a write (the primary) or a read
    (a replica, if any); it is called again after a fork, so a rebuilt client is picked
    up. ``direct`` says whether commands go over held connections of the primary's pool
    (see :func:`direct_capable`); reads are then sent to the primary too.

    Thread-safe: each thread uses its own connection; a cluster or replica client is
    redis-py's, itself thread-safe. Replies are raw on held connections (no redis-py
    response callbacks): bytes, ints, lists, None.
    """

    def __init__(self, client_for: Callable[[bool], Any], *, direct: bool, retries: int = 1,
                 retry_on_timeout: bool = False) -> None:
        self.client_for = client_for
        self.direct = direct
        self.retries = retries
        self._retry_on: tuple[type[BaseException], ...] = (_rx.ConnectionError,) + (
            (_rx.TimeoutError, TimeoutError) if retry_on_timeout else ())
        self._local = threading.local()
        _wires.add(self)

    @classmethod
    def over(cls, client: Any, retries: int = 1, retry_on_timeout: bool = False) -> Wire:
        """A wire over one redis-py client (reads and writes alike), e.g. the client of a
        django-redis or Django RedisCache backend."""
        return cls(lambda write: client, direct=direct_capable(client), retries=retries,
                   retry_on_timeout=retry_on_timeout)

    # -- held connections

    def connection(self) -> Any:
        """This thread's held connection to the primary (direct mode only)."""
        held = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            held = self._local.held = _Held(self.client_for(True).connection_pool)
        return held.connection

    def held_connection(self) -> Any:
        """This thread's held connection in this process, or None (none taken yet, or
        direct mode is off); for inspection and tests."""
        held = getattr(self._local, "held", None)
        return held.connection if held is not None and held.pid == os.getpid() else None

    def drop_connection(self) -> None:
        """After a failure: the connection is closed (a half-read reply must never be read
        by the next command) and handed back; the next command takes one from the pool,
        which connects it afresh (with Sentinel, to the primary the sentinels name now)."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held.connection is not None and held.pid == os.getpid():
            held.connection.disconnect()
            held.release()

    def _forget_after_fork(self) -> None:
        self._local = threading.local()

    def _retrying(self, attempt: Callable[[Any], Any]) -> Any:
        tries = 0
        while True:
            try:
                return attempt(self.connection())
            except _rx.ResponseError:
                raise  # the reply was read: the connection is in step
            except BaseException as exc:
                self.drop_connection()
                if tries >= self.retries or not isinstance(exc, self._retry_on):
                    raise
                tries += 1

    # -- sync

    def execute(self, *args: Any, write: bool = True) -> Any:
        """One command; its reply (raw on a held connection). Raises redis-py's errors."""
        if not self.direct:
            return self.client_for(write).execute_command(*args)
        return self._retrying(lambda conn: (conn.send_command(*args), conn.read_response())[1])

    def execute_many(self, commands: Sequence[tuple], write: bool = True) -> list:
        """Commands in one round trip (a pipeline without MULTI); their replies in order.
        An error reply is raised after every reply was read. On a cluster each command is
        routed by its keys (multi-key commands must stay within one slot)."""
        if not commands:
            return []
        if not self.direct:
            pipe = self.client_for(write).pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()

        def attempt(conn: Any) -> list:
            conn.send_packed_command(conn.pack_commands(commands))
            replies, error = [], None
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except _rx.ResponseError as exc:
                    replies.append(exc)
                    error = error or exc
            if error is not None:
                raise error
            return replies

        return self._retrying(attempt)

    def evalsha(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Runs ``script`` (``EVALSHA``, loading it once on NOSCRIPT: after a restart,
        ``SCRIPT FLUSH`` or a failover)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return self.execute(*command)
        except _rx.NoScriptError:
            self.client_for(True).script_load(script.source)
            return self.execute(*command)

    # -- asyncio (redis.asyncio clients of the running loop)

    async def aexecute(self, client: Any, *args: Any) -> Any:
        return await client.execute_command(*args)

    async def aexecute_many(self, client: Any, commands: Sequence[tuple]) -> list:
        if not commands:
            return []
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()

    async def aevalsha(self, client: Any, script: Script, keys: Sequence[Any],
                       args: Sequence[Any]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await client.execute_command(*command)
        except _rx.NoScriptError:
            await client.script_load(script.source)
            return await client.execute_command(*command)


_wires: weakref.WeakSet[Wire] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread exists here: no other thread can be mid-command.
    for wire in list(_wires):
        wire._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
