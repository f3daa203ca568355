"""The shared tier of ``FastCache``: Django's cache API over Redis (single node, replicas,
Sentinel or Cluster), with the same method surface as the C++ engine of the embedded
default, so the backend calls whichever it has without knowing which.

Keys and values are made by the C++ engine (``engine.key``, ``engine.dumps``,
``engine.loads``); every Redis call goes through one :class:`FailurePolicy`, which
decides what an error does.

The L1 (on unless ``L1=False``) keeps decoded values in this process, coherent with Redis
through :mod:`.coherence`: another process's write, an expiry or a flush in Redis drops
the copy here. Reads that miss take the key's invalidation token before asking Redis and
fill the L1 only if no invalidation came meanwhile (``Engine.l1_fill``); this process's
own writes replace or drop their key's copy once Redis has answered (``Engine.l1_write``,
``Engine.l1_invalidate``), so a thread reads its own writes. An L1 entry never outlives
the Redis TTL it was read or written with, nor ``L1_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis.lock
from redis import exceptions as _rx
from redis.exceptions import ResponseError as _ResponseError

from . import _core
from .coherence import listener_for
from .errors import DecodeError, LockError, LockNotOwnedError
from .policy import FailurePolicy
from .redis_client import RedisClients, ascan_keys, group_by_slot, key_slot, scan_keys

__all__ = ["RedisLock", "RedisTier"]

logger = logging.getLogger("django_fastcache.redis")
_MISSING = object()

# incr: one atomic step when the value is a Redis integer; nil when the key is missing.
_INCR = """
if redis.call('exists', KEYS[1]) == 0 then return false end
return redis.call('incrby', KEYS[1], ARGV[1])
"""
# touch/expire/persist: ARGV[1] is 'persist', 'px' (ARGV[2] ms) or 'pxat' (ARGV[2] unix ms).
# 1 when the key existed (and was changed), 0 when it did not.
_EXPIRE = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if ARGV[1] == 'persist' then redis.call('persist', KEYS[1])
elseif ARGV[1] == 'px' then redis.call('pexpire', KEYS[1], ARGV[2])
else redis.call('pexpireat', KEYS[1], ARGV[2]) end
return 1
"""
# Releases a get_or_set lease only if it is still ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_NOT_AN_INTEGER = ("not an integer", "out of range", "would overflow")
_BATCH = 500


def _index_groups(finals: list[str]) -> dict[int, list[int]]:
    """Positions of the keys grouped by cluster hash slot."""
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(finals):
        groups.setdefault(key_slot(k), []).append(i)
    return groups


def _px(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisLock(redis.lock.Lock):
    """redis-py's lock, raising this package's :class:`LockError` /
    :class:`LockNotOwnedError` (as the in-process ``LocalLock`` does), so callers catch one
    hierarchy whichever tier is configured. Same thread safety as redis-py's ``Lock``."""

    def __enter__(self) -> RedisLock:
        try:
            return super().__enter__()
        except _rx.LockError as exc:
            raise LockError(f"could not acquire lock {self.name!r}") from exc

    def release(self) -> None:
        try:
            super().release()
        except _rx.LockError as exc:  # no token here, or the lock expired / changed hands
            raise LockNotOwnedError(f"cannot release lock {self.name!r}: not owned") from exc

    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        return self._owned_only(super().extend, additional_time, replace_ttl)

    def reacquire(self) -> bool:
        return self._owned_only(super().reacquire)

    def _owned_only(self, fn, *args):
        if self.local.token is None:
            raise LockNotOwnedError(f"cannot change lock {self.name!r}: not owned")
        try:
            return fn(*args)
        except _rx.LockNotOwnedError as exc:
            raise LockNotOwnedError(f"cannot change lock {self.name!r}: not owned") from exc
        except _rx.LockError as exc:  # e.g. a lock without a timeout cannot be extended
            raise LockError(str(exc)) from exc


class _HeldConnection:
    """A connection taken from a pool for one thread; handed back to the pool when the
    thread ends (its thread-local storage is dropped), so short-lived threads leak none."""

    __slots__ = ("pool", "pid", "connection")

    def __init__(self, pool) -> None:
        self.pool = pool
        self.pid = os.getpid()
        self.connection = None  # set first: __del__ runs even if get_connection() raises
        self.connection = pool.get_connection()

    def release(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None and self.pid == os.getpid():
            try:
                self.pool.release(connection)
            except Exception:  # the pool may be closed or half torn down at exit
                pass

    def __del__(self) -> None:
        self.release()


class RedisTier:
    """Django's cache operations on Redis; see the module docstring.

    Thread-safe (redis-py pools are); asyncio methods (``a*``) use ``redis.asyncio``
    clients of the running loop.
    """

    def __init__(self, engine: _core.Engine, clients: RedisClients, policy: FailurePolicy, *,
                 clear_pattern: str | None, lock_timeout: float, lock_wait: float | None,
                 store: _core.Store | None = None, l1_timeout: float | None = None,
                 l1_max_item_bytes: int = 0) -> None:
        self.engine = engine
        self.clients = clients
        self.policy = policy
        self.clear_pattern = clear_pattern  # None: FLUSHDB (no key prefix)
        # The coherent L1: the store (None: no L1), the cap on an entry's life (None: only
        # the Redis TTL) and the largest encoded value it keeps.
        self.store = store
        self.l1 = store is not None
        self.l1_timeout = l1_timeout
        self.l1_max_item_bytes = l1_max_item_bytes
        self.listener = listener_for(store, clients) if store is not None else None
        if store is not None:
            engine.set_l1_max_item_bytes(l1_max_item_bytes)
            # A Redis error on the data path: writes may have gone unheard; bypass the L1.
            if self.listener.suspect not in policy.on_transient_error:
                policy.on_transient_error.append(self.listener.suspect)
        self.lock_timeout = lock_timeout
        self.lock_wait = lock_wait
        self.hits = self.misses = self.decode_errors = 0
        self._scripts: dict[tuple[int, str], Any] = {}
        # One server for reads and writes (a single node without replicas, or the Sentinel
        # primary): each thread keeps one connection of the pool for itself and talks to it
        # directly. Borrowing from redis-py's pool and parsing through the client costs
        # more per command than the round trip itself on a local server.
        self._direct = clients.mode != "cluster" and len(clients.config.nodes) <= 1
        self._local = threading.local()
        self._retries = clients.config.retries
        self._retry_on: tuple[type[BaseException], ...] = (_rx.ConnectionError,) + (
            (_rx.TimeoutError, TimeoutError) if clients.config.retry_on_timeout else ())
        if self._direct:
            self._read = self._write = self._execute
        else:
            self._read = self._execute_read
            self._write = self._execute_write

    def follow_keys(self, key_prefix: str, custom_key_func: bool) -> None:
        """Tells the listener which keys this cache makes, so that Redis tracks them: the
        ones starting with ``key_prefix + ":"``, or every key with a custom key function."""
        if self.listener is not None:
            self.listener.track("" if custom_key_func else key_prefix + ":")

    # ------------------------------------------------------------------ plumbing

    def _client(self, write: bool = True):
        return self.clients.client(write=write)

    def _connection(self):
        held = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():
            held = self._local.held = _HeldConnection(self.clients.client(True).connection_pool)
        return held.connection

    def _execute(self, *args):
        """One command on this thread's connection, retried on a connection error as the
        client would (``RETRIES``, ``RETRY_ON_TIMEOUT``); the raw reply (no callbacks)."""
        attempt = 0
        while True:
            try:
                conn = self._connection()
                conn.send_command(*args)
                return conn.read_response()
            except _ResponseError:
                raise  # the reply was read: the connection is in step
            except BaseException as exc:
                self._drop_connection()
                if attempt >= self._retries or not isinstance(exc, self._retry_on):
                    raise
                attempt += 1

    def _drop_connection(self) -> None:
        """After a failure: the connection is closed (a half-read reply must never be read
        by the next call) and handed back; the next call takes one from the pool, which
        connects it afresh (with Sentinel, to the primary the sentinels name now)."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None:
            held.connection.disconnect()
            held.release()

    def _execute_many(self, commands: list[tuple]) -> list:
        """Commands in one round trip (a pipeline without MULTI); the raw replies. An error
        reply is raised after every reply has been read."""
        if not self._direct:
            pipe = self._client().pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return pipe.execute()
        attempt = 0
        while True:
            try:
                conn = self._connection()
                conn.send_packed_command(conn.pack_commands(commands))
                replies = []
                error = None
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except _ResponseError as exc:
                        replies.append(exc)
                        error = error or exc
                if error is not None:
                    raise error
                return replies
            except _ResponseError:
                raise
            except BaseException as exc:
                self._drop_connection()
                if attempt >= self._retries or not isinstance(exc, self._retry_on):
                    raise
                attempt += 1

    def _execute_read(self, *args):
        return self.clients.client(False).execute_command(*args)

    def _execute_write(self, *args):
        return self.clients.client(True).execute_command(*args)

    def _script(self, client, source: str):
        handle = (id(client), source)
        script = self._scripts.get(handle)
        if script is None:  # register_script handles EVALSHA and NOSCRIPT reloads
            script = self._scripts[handle] = client.register_script(source)
        return script

    def _decode(self, raw: bytes, key: str) -> Any:
        try:
            return self.engine.loads(raw)
        except DecodeError as exc:
            self.decode_errors += 1
            logger.warning("cache key %r holds a value that cannot be read (%s): served as a miss",
                           key, exc)
            return _MISSING

    def now(self) -> float:
        return time.time()

    def _seconds(self, timeout) -> float | None:
        return self.engine.timeout_seconds(timeout)

    def _l1_seconds(self, ttl_ms: int | None) -> float:
        """How long an L1 copy may live: the Redis TTL (ms, None: none), capped."""
        seconds = float("inf") if self.l1_timeout is None else self.l1_timeout
        if ttl_ms is not None and ttl_ms >= 0:
            seconds = min(seconds, ttl_ms / 1000.0)
        return seconds

    def _token(self, k: str) -> int | None:
        """Before a write: the key's invalidation token (None without an L1)."""
        return self.engine.l1_token(k) if self.l1 else None

    def _wrote(self, k: str, token: int | None, value: Any, size: int, px: int | None) -> None:
        """After a write of ``value`` (encoded in ``size`` bytes) returned OK."""
        if token is None:
            return
        if size > self.l1_max_item_bytes:
            self.engine.l1_invalidate(k)
        else:
            self.engine.l1_write(k, value, self._l1_seconds(px), token)

    def _changed(self, k: str) -> None:
        """After a write whose result this process does not keep (or that failed)."""
        if self.l1:
            self.engine.l1_invalidate(k)

    def _changed_all(self) -> None:
        if self.l1:
            self.store.reset(self.store.usable)

    # ------------------------------------------------------------------ reads

    def get(self, key, default=None, version=None):
        if self.l1 and self.store.usable:
            value = self.engine.l1_get(self.engine.key(key, version), _MISSING)
            if value is not _MISSING:
                return value
        return self.get_from_redis(key, default, version)

    def get_from_redis(self, key, default=None, version=None):
        """``get`` after an L1 miss (or with the L1 bypassed): reads Redis, and fills the
        L1 unless an invalidation of the key arrived while the read was in flight."""
        k = self.engine.key(key, version)
        token = None
        if self.l1:
            self.listener.ensure_running()
            if self.store.usable:
                token = self.engine.l1_token(k)
        if token is not None:
            raw, ttl = self.policy.run(self._get_with_ttl, k, default=(None, None))
        else:
            raw, ttl = self.policy.run(self._read, "GET", k), None
        return self._read_done(k, raw, ttl, token, default)

    def _read_done(self, k: str, raw: bytes | None, ttl, token, default):
        """The value read for one key (or `default`), counted, and kept in the L1 when the
        read began under `token` and no invalidation of the key has arrived since."""
        value = _MISSING if raw is None else self._decode(raw, k)
        if value is _MISSING:
            self.misses += 1
            return default
        self.hits += 1
        if token is not None and len(raw) <= self.l1_max_item_bytes:
            self.engine.l1_fill(k, value, self._l1_seconds(ttl), token)
        return value

    def _get_with_ttl(self, k: str):
        if self._direct:
            raw, ttl = self._execute_many([("GET", k), ("PTTL", k)])
        else:
            # From the primary: a replica may not have the write whose invalidation has
            # already been applied here, and its old value would then stay in the L1.
            pipe = self._client(True).pipeline(transaction=False)
            pipe.get(k)
            pipe.pttl(k)
            raw, ttl = pipe.execute()
        return raw, (None if ttl == -1 else ttl)

    def get_many(self, keys: Iterable, version=None) -> dict:
        keys = list(keys)
        if not keys:
            return {}
        finals = self.engine.keys_of(keys, version)
        out = {}
        if self.l1 and self.store.usable:
            rest_keys, rest_finals = [], []
            for key, k in zip(keys, finals):
                value = self.engine.l1_get(k, _MISSING)
                if value is _MISSING:
                    rest_keys.append(key)
                    rest_finals.append(k)
                else:
                    out[key] = value
            if not rest_finals:
                return out
            keys, finals = rest_keys, rest_finals
        raws = self.policy.run(self._mget, finals, default=None) or [None] * len(finals)
        found = 0
        for key, k, raw in zip(keys, finals, raws):
            if raw is None:
                continue
            value = self._decode(raw, k)
            if value is not _MISSING:
                out[key] = value
                found += 1
        self.hits += found
        self.misses += len(keys) - found
        return out

    def _mget(self, finals: list[str]) -> list:
        if not self.clients.is_cluster:
            return self._read("MGET", *finals)
        client = self._client(False)
        # One MGET per slot, all in one pipeline: one round trip per node.
        groups = _index_groups(finals)
        pipe = client.pipeline()
        order = []
        for indexes in groups.values():
            pipe.execute_command("MGET", *(finals[i] for i in indexes))
            order.append(indexes)
        out: list = [None] * len(finals)
        for indexes, values in zip(order, pipe.execute()):
            for i, raw in zip(indexes, values):
                out[i] = raw
        return out

    def has_key(self, key, version=None) -> bool:
        k = self.engine.key(key, version)
        return bool(self.policy.run(self._read, "EXISTS", k, default=0))

    def pttl(self, key, version=None) -> int:
        k = self.engine.key(key, version)
        return self.policy.run(self._read, "PTTL", k, default=-2)

    def keys(self, pattern: str) -> list[str]:
        found = self.policy.run(
            lambda: [k.decode("utf-8", "surrogatepass") for k in scan_keys(self._client(False), match=pattern)],
            default=[],
        )
        return found

    # ------------------------------------------------------------------ writes

    def set(self, key, value, timeout, version=None) -> bool:
        """True once stored; with a timeout <= 0, whether a key was deleted (django-redis)."""
        data = self.engine.dumps(value)
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        token = self._token(k)
        ok = False
        try:
            if seconds is not None and seconds <= 0:
                return bool(self.policy.run(self._write, "DEL", k, write=True, default=0))
            px = None if seconds is None else _px(seconds)
            if px is None:
                ok = self.policy.run(self._write, "SET", k, data, write=True, default=False)
            else:
                ok = self.policy.run(self._write, "SET", k, data, "PX", px, write=True,
                                     default=False)
        finally:
            if ok:
                self._wrote(k, token, value, len(data), px)
            else:
                self._changed(k)
        return bool(ok)

    def add(self, key, value, timeout, version=None) -> bool:
        data = self.engine.dumps(value)
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        if seconds is not None and seconds <= 0:
            # Django: an add with a zero timeout succeeds if the key was free, stores nothing.
            added = bool(self.policy.run(self._write, "SET", k, data, "NX", write=True,
                                         default=False))
            if added:
                self.policy.run(self._write, "DEL", k, write=True)
            return added
        px = None if seconds is None else _px(seconds)
        command = ("SET", k, data, "NX") if px is None else ("SET", k, data, "NX", "PX", px)
        token = self._token(k)
        added = False
        try:
            added = bool(self.policy.run(self._write, *command, write=True, default=False))
        finally:
            if added:
                self._wrote(k, token, value, len(data), px)
        return added

    def _batch(self, data: dict, timeout, version):
        """set_many's inputs as Redis sees them: the keys, their final keys, the encoded
        values (all encoded before any I/O, so an unserializable value writes nothing) and
        the timeout in seconds."""
        keys = list(data)
        finals = self.engine.keys_of(keys, version)
        blobs = [self.engine.dumps(v) for v in data.values()]
        return keys, finals, blobs, self._seconds(timeout)

    def set_many(self, data: dict, timeout, version=None) -> list:
        if not data:
            return []
        keys, finals, blobs, seconds = self._batch(data, timeout, version)
        if seconds is not None and seconds <= 0:
            self._delete_finals(finals)
            return []
        px = None if seconds is None else _px(seconds)

        def write() -> bool:
            if px is None:
                commands = [("SET", k, blob) for k, blob in zip(finals, blobs)]
            else:
                commands = [("SET", k, blob, "PX", px) for k, blob in zip(finals, blobs)]
            self._execute_many(commands)
            return True

        tokens = [self._token(k) for k in finals]
        ok = False
        try:
            ok = self.policy.run(write, write=True, default=False)
        finally:
            if self.l1:
                for k, token, value, blob in zip(finals, tokens, data.values(), blobs):
                    if ok:
                        self._wrote(k, token, value, len(blob), px)
                    else:
                        self._changed(k)
        return [] if ok else keys

    def delete(self, key, version=None) -> bool:
        k = self.engine.key(key, version)
        try:
            return bool(self.policy.run(self._write, "DEL", k, write=True, default=0))
        finally:
            self._changed(k)

    def delete_many(self, keys: Iterable, version=None) -> int:
        finals = self.engine.keys_of(list(keys), version)
        return self._delete_finals(finals) if finals else 0

    def _delete_finals(self, finals: list[str]) -> int:
        def unlink() -> int:
            client = self._client()
            if not self.clients.is_cluster:
                return sum(client.unlink(*finals[i:i + _BATCH]) for i in range(0, len(finals), _BATCH))
            pipe = client.pipeline()
            for group in group_by_slot(finals).values():
                pipe.execute_command("UNLINK", *group)
            return sum(pipe.execute())

        try:
            return self.policy.run(unlink, write=True, default=0)
        finally:
            for k in finals:
                self._changed(k)

    def touch(self, key, timeout, version=None) -> bool:
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        if seconds is None:
            args = ("persist", 0)
        else:
            args = ("px", _px(seconds) if seconds > 0 else 0)
        return self._expire(k, args)

    def expire_at(self, key, when: float | None, version=None) -> bool:
        k = self.engine.key(key, version)
        return self._expire(k, ("persist", 0) if when is None else ("pxat", int(when * 1000)))

    def _expire(self, k: str, args) -> bool:
        client = self._client()
        script = self._script(client, _EXPIRE)
        try:
            return bool(self.policy.run(script, keys=[k], args=list(args), write=True, default=0))
        finally:
            self._changed(k)

    def incr(self, key, delta, version=None):
        k = self.engine.key(key, version)
        try:
            return self._incr(k, key, delta)
        finally:
            self._changed(k)

    def _incr(self, k: str, key, delta):
        client = self._client()
        script = self._script(client, _INCR)
        try:
            if isinstance(delta, int) and not isinstance(delta, bool) and -(2**63) <= delta < 2**63:
                result = self.policy.run(script, keys=[k], args=[delta], write=True, default=_MISSING)
                if result is _MISSING:
                    raise ValueError(f"Key '{key}' not found")  # Redis unreachable: as Django's
                if result is None:
                    raise ValueError(f"Key '{key}' not found")
                return result
        except _ResponseError as exc:
            if not any(text in str(exc) for text in _NOT_AN_INTEGER):
                raise
        return self._incr_slow(k, key, delta)

    def _incr_slow(self, k: str, key, delta):
        """For values Redis cannot INCRBY (floats, Decimals, ints beyond 64 bits): read,
        add and write back keeping the TTL, as Django's BaseCache.incr does (not atomic)."""
        client = self._client()
        raw = self.policy.run(client.get, k)
        value = _MISSING if raw is None else self._decode(raw, k)
        if value is _MISSING:
            raise ValueError(f"Key '{key}' not found")
        new = value + delta
        self.policy.run(client.set, k, self.engine.dumps(new), keepttl=True, xx=True, write=True)
        return new

    def delete_matching(self, pattern: str) -> int:
        def run() -> int:
            client = self._client()
            batch, deleted = [], 0
            for k in scan_keys(client, match=pattern, count=_BATCH):
                batch.append(k)
                if len(batch) >= _BATCH:
                    deleted += self._unlink_raw(client, batch)
                    batch = []
            if batch:
                deleted += self._unlink_raw(client, batch)
            return deleted

        try:
            return self.policy.run(run, write=True, default=0)
        finally:
            self._changed_all()

    def _unlink_raw(self, client, keys: list[bytes]) -> int:
        if not self.clients.is_cluster:
            return client.unlink(*keys)
        pipe = client.pipeline()
        for group in group_by_slot(keys).values():
            pipe.execute_command("UNLINK", *group)
        return sum(pipe.execute())

    def clear(self) -> None:
        if self.clear_pattern is not None:
            self.delete_matching(self.clear_pattern)
            return
        client = self._client()
        try:
            if self.clients.is_cluster:
                self.policy.run(client.flushdb, target_nodes=client.PRIMARIES, write=True)
            else:
                self.policy.run(client.flushdb, write=True)
        finally:
            self._changed_all()

    # ------------------------------------------------------------------ stampede protection

    def get_or_set(self, cache, key, default, timeout, version=None):
        """One process computes a missing value while others wait for it: a lease in Redis
        (SET NX PX) names the computing process; the others poll for the value for up to
        ``lock_wait`` seconds, then compute it themselves."""
        value = cache.get(key, _MISSING, version=version)
        if value is not _MISSING:
            return value
        if not callable(default):
            cache.add(key, default, timeout=timeout, version=version)
            return cache.get(key, default, version=version)
        lease = self.engine.key(key, version) + ":__fastcache_lease__"
        token = uuid.uuid4().hex
        client = self._client()
        won = self.policy.run(client.set, lease, token, nx=True, px=_px(self.lock_timeout),
                              write=True, default=True)
        if not won:
            deadline = time.monotonic() + (self.lock_timeout if self.lock_wait is None
                                           else min(self.lock_wait, self.lock_timeout))
            delay = 0.005
            while time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                value = cache.get(key, _MISSING, version=version)
                if value is not _MISSING:
                    return value
        try:
            value = default()
            cache.add(key, value, timeout=timeout, version=version)
            return cache.get(key, value, version=version)
        finally:
            if won:
                self.policy.run(self._script(client, _RELEASE), keys=[lease], args=[token],
                                write=True)

    # ------------------------------------------------------------------ asyncio twins

    def _aclient(self, write: bool = True):
        return self.clients.async_client(write=write)

    async def aget(self, key, default=None, version=None):
        k = self.engine.key(key, version)
        token = None
        if self.l1:
            # A hit is served without awaiting anything.
            if self.store.usable:
                value = self.engine.l1_get(k, _MISSING)
                if value is not _MISSING:
                    return value
            self.listener.ensure_running()
            if self.store.usable:
                token = self.engine.l1_token(k)
        if token is None:
            raw = await self.policy.arun(self._aclient(False).get, k)
            ttl = None
        else:
            raw, ttl = await self.policy.arun(self._aget_with_ttl, k, default=(None, None))
        return self._read_done(k, raw, ttl, token, default)

    async def _aget_with_ttl(self, k: str):
        pipe = self._aclient(True).pipeline(transaction=False)
        pipe.get(k)
        pipe.pttl(k)
        raw, ttl = await pipe.execute()
        return raw, (None if ttl == -1 else ttl)

    async def aget_many(self, keys: Iterable, version=None) -> dict:
        keys = list(keys)
        if not keys:
            return {}
        finals = self.engine.keys_of(keys, version)
        client = self._aclient(False)
        if self.clients.is_cluster:
            groups = _index_groups(finals)
            raws: list = [None] * len(finals)

            async def fetch(indexes):
                values = await client.execute_command("MGET", *(finals[i] for i in indexes))
                for i, raw in zip(indexes, values):
                    raws[i] = raw

            async def all_groups():
                await asyncio.gather(*(fetch(ix) for ix in groups.values()))

            await self.policy.arun(all_groups)
        else:
            raws = await self.policy.arun(client.mget, finals, default=None) or [None] * len(finals)
        out = {}
        for key, k, raw in zip(keys, finals, raws):
            if raw is not None:
                value = self._decode(raw, k)
                if value is not _MISSING:
                    out[key] = value
        return out

    async def aset(self, key, value, timeout, version=None) -> None:
        data = self.engine.dumps(value)
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        client = self._aclient()
        token = self._token(k)
        ok = False
        px = None if seconds is None else _px(seconds)
        try:
            if seconds is not None and seconds <= 0:
                await self.policy.arun(client.delete, k, write=True)
            else:
                ok = bool(await self.policy.arun(client.set, k, data, px=px, write=True,
                                                 default=False))
        finally:
            if ok:
                self._wrote(k, token, value, len(data), px)
            else:
                self._changed(k)

    async def aadd(self, key, value, timeout, version=None) -> bool:
        data = self.engine.dumps(value)
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        client = self._aclient()
        if seconds is not None and seconds <= 0:
            added = bool(await self.policy.arun(client.set, k, data, nx=True, write=True, default=False))
            if added:
                await self.policy.arun(client.delete, k, write=True)
            return added
        px = None if seconds is None else _px(seconds)
        token = self._token(k)
        added = False
        try:
            added = bool(await self.policy.arun(client.set, k, data, nx=True, px=px, write=True,
                                                default=False))
        finally:
            if added:
                self._wrote(k, token, value, len(data), px)
        return added

    async def aset_many(self, data: dict, timeout, version=None) -> list:
        if not data:
            return []
        keys, finals, blobs, seconds = self._batch(data, timeout, version)
        client = self._aclient()
        if seconds is not None and seconds <= 0:
            await self.adelete_many(keys, version)
            return []
        px = None if seconds is None else _px(seconds)

        async def write() -> bool:
            pipe = client.pipeline(transaction=False)
            for k, blob in zip(finals, blobs):
                pipe.set(k, blob, px=px)
            await pipe.execute()
            return True

        try:
            ok = await self.policy.arun(write, write=True, default=False)
        finally:
            for k in finals:
                self._changed(k)
        return [] if ok else keys

    async def adelete(self, key, version=None) -> bool:
        k = self.engine.key(key, version)
        try:
            return bool(await self.policy.arun(self._aclient().delete, k, write=True, default=0))
        finally:
            self._changed(k)

    async def adelete_many(self, keys: Iterable, version=None) -> None:
        finals = self.engine.keys_of(list(keys), version)
        if not finals:
            return
        client = self._aclient()

        async def unlink():
            for group in (group_by_slot(finals).values() if self.clients.is_cluster else [finals]):
                await client.unlink(*group)

        try:
            await self.policy.arun(unlink, write=True)
        finally:
            for k in finals:
                self._changed(k)

    async def ahas_key(self, key, version=None) -> bool:
        k = self.engine.key(key, version)
        return bool(await self.policy.arun(self._aclient(False).exists, k, default=0))

    async def atouch(self, key, timeout, version=None) -> bool:
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        args = ("persist", 0) if seconds is None else ("px", _px(seconds) if seconds > 0 else 0)
        client = self._aclient()
        script = self._script(client, _EXPIRE)
        try:
            return bool(await self.policy.arun(script, keys=[k], args=list(args), write=True,
                                               default=0))
        finally:
            self._changed(k)

    async def aincr(self, key, delta, version=None):
        k = self.engine.key(key, version)
        try:
            return await self._aincr(k, key, delta)
        finally:
            self._changed(k)

    async def _aincr(self, k: str, key, delta):
        client = self._aclient()
        if isinstance(delta, int) and not isinstance(delta, bool) and -(2**63) <= delta < 2**63:
            script = self._script(client, _INCR)
            try:
                result = await self.policy.arun(script, keys=[k], args=[delta], write=True,
                                                default=None)
                if result is None:
                    raise ValueError(f"Key '{key}' not found")
                return result
            except _ResponseError as exc:
                if not any(text in str(exc) for text in _NOT_AN_INTEGER):
                    raise
        raw = await self.policy.arun(client.get, k)
        value = _MISSING if raw is None else self._decode(raw, k)
        if value is _MISSING:
            raise ValueError(f"Key '{key}' not found")
        new = value + delta
        await self.policy.arun(client.set, k, self.engine.dumps(new), keepttl=True, xx=True,
                               write=True)
        return new

    async def aclear(self) -> None:
        client = self._aclient()

        async def run():
            if self.clear_pattern is None and not self.clients.is_cluster:
                await client.flushdb()
                return
            pattern = self.clear_pattern or "*"
            batch = []
            async for k in ascan_keys(client, match=pattern, count=_BATCH):
                batch.append(k)
                if len(batch) >= _BATCH:
                    await self._aunlink(client, batch)
                    batch = []
            if batch:
                await self._aunlink(client, batch)

        try:
            await self.policy.arun(run, write=True)
        finally:
            self._changed_all()

    async def _aunlink(self, client, keys) -> None:
        for group in (group_by_slot(keys).values() if self.clients.is_cluster else [keys]):
            await client.unlink(*group)

    # ------------------------------------------------------------------ operations

    def stats(self) -> dict:
        lookups = self.hits + self.misses
        return {
            "redis_hits": self.hits,
            "redis_misses": self.misses,
            "redis_hit_ratio": self.hits / lookups if lookups else 0.0,
            "decode_errors": self.decode_errors,
            "redis_mode": self.clients.mode,
            **self.policy.stats(),
            **(self.listener.stats() if self.listener is not None else {}),
            **({"l1_" + k: v for k, v in self.store.coherence_stats().items()} if self.l1 else {}),
        }

    def close(self) -> None:
        """Connections stay pooled across requests, as Django's RedisCache keeps them."""

