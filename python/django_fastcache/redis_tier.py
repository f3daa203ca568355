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
from typing import Any, NamedTuple

import redis.lock
from redis import exceptions as _rx
from redis.exceptions import ResponseError as _ResponseError

from . import _core
from .coherence import listener_for
from django.core.exceptions import ImproperlyConfigured

from .errors import DecodeError, LockError, LockNotOwnedError
from .policy import FailurePolicy
from .wire import Wire
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
_NAMESPACE_MARK = "fastcache.namespace.mark"
_BATCH = 500


def _index_groups(finals: list[str]) -> dict[int, list[int]]:
    """Positions of the keys grouped by cluster hash slot."""
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(finals):
        groups.setdefault(key_slot(k), []).append(i)
    return groups


def glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


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


class _ReadPlan(NamedTuple):
    """A prepared read: the final keys, their L1 tokens (None: no L1 fill), the key
    positions of each MGET (one per cluster slot) and the commands, in order."""

    finals: list[str]
    tokens: list[int] | None
    groups: list[list[int]]
    commands: list[tuple]

    @property
    def primary(self) -> bool:
        """Read from the primary (the L1 is filled from what it answers)."""
        return self.tokens is not None


class _WritePlan(NamedTuple):
    """A prepared write of one or more keys: what the L1 needs afterwards, and the
    commands (``SET``, or ``DEL`` for an already expired timeout: ``stores`` False)."""

    finals: list[str]
    values: list
    blobs: list[bytes]
    px: int | None
    tokens: list[int | None]
    commands: list[tuple]
    stores: bool


class RedisTier:
    """Django's cache operations on Redis; see the module docstring.

    Thread-safe (redis-py pools are); asyncio methods (``a*``) use ``redis.asyncio``
    clients of the running loop.
    """

    def __init__(self, engine: _core.Engine, clients: RedisClients, policy: FailurePolicy, *,
                 lock_timeout: float, lock_wait: float | None,
                 store: _core.Store | None = None, l1_timeout: float | None = None,
                 l1_max_item_bytes: int = 0) -> None:
        self.engine = engine
        self.clients = clients
        self.policy = policy
        # What keys this cache makes (see namespace()); set by follow_keys().
        self._key_prefix = ""
        self._custom_keys = False
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
        self.hits = self.misses = self.decode_errors = self.undecodable_keys = 0
        self._scripts: dict[tuple[int, str], Any] = {}
        # Every command goes through one wire (held connections on a single node or the
        # Sentinel primary, redis-py's routing on a cluster or with read replicas).
        self.wire = Wire(clients.client,
                         direct=clients.mode != "cluster" and len(clients.config.nodes) <= 1,
                         retries=clients.config.retries,
                         retry_on_timeout=clients.config.retry_on_timeout)

    def follow_keys(self, key_prefix: str, custom_key_func: bool) -> None:
        """Tells the listener which keys this cache makes, so that Redis tracks them: the
        ones starting with ``key_prefix + ":"``, or every key with a custom key function."""
        self._key_prefix = key_prefix
        self._custom_keys = custom_key_func
        if self.listener is not None:
            self.listener.track("" if custom_key_func else key_prefix + ":")

    # ------------------------------------------------------------------ plumbing

    def _client(self, write: bool = True):
        return self.clients.client(write=write)

    def _read(self, *args):
        return self.wire.execute(*args, write=False)

    def _write(self, *args):
        return self.wire.execute(*args, write=True)

    # ------------------------------------------------------------------ public I/O
    # For extensions (django-redis's hash/set/zset families...): any command through this
    # cache's wire and failure policy, with the L1 kept coherent for the keys it writes.

    def client(self, write: bool = True):
        """The redis-py client: ``redis.Redis`` (single node; with Sentinel, the one that
        follows the primary) or ``redis.cluster.RedisCluster``; ``write=False`` may be a
        read replica."""
        return self.clients.client(write=write)

    def async_client(self, write: bool = True):
        """The ``redis.asyncio`` client of the running event loop (see :meth:`client`)."""
        return self.clients.async_client(write=write)

    def run(self, *command, write: bool = True, keys: Iterable[str] = (), default=None):
        """One command (final keys in it) through the failure policy: its raw reply, or
        ``default`` when Redis is unreachable and ``IGNORE_EXCEPTIONS`` is on. ``keys``: the
        final keys a write changes, whose L1 copies are dropped."""
        try:
            return self.policy.run(self.wire.execute, *command, write=write, default=default)
        finally:
            if write:
                for k in keys:
                    self._changed(k)

    def run_many(self, commands: list[tuple], *, write: bool = True, keys: Iterable[str] = (),
                 default=None):
        """Commands in one round trip (see :meth:`run`); their replies, in order."""
        try:
            return self.policy.run(self.wire.execute_many, commands, write=write,
                                   default=default)
        finally:
            if write:
                for k in keys:
                    self._changed(k)

    async def arun(self, *command, write: bool = True, keys: Iterable[str] = (), default=None):
        """:meth:`run` on the running loop's ``redis.asyncio`` client."""
        try:
            return await self.policy.arun(self.wire.aexecute, self._aclient(write), *command,
                                          write=write, default=default)
        finally:
            if write:
                for k in keys:
                    self._changed(k)

    async def arun_many(self, commands: list[tuple], *, write: bool = True,
                        keys: Iterable[str] = (), default=None):
        try:
            return await self.policy.arun(self.wire.aexecute_many, self._aclient(write),
                                          commands, write=write, default=default)
        finally:
            if write:
                for k in keys:
                    self._changed(k)

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

    # One "L1, else Redis" path serves get, aget, get_many, aget_many (and so the tag
    # counters): prepare (L1 lookups, invalidation tokens, the commands) -> one round trip
    # -> finish (decode, count, fill the L1 with the values and their Redis TTLs).

    def get(self, key, default=None, version=None):
        if self.l1 and self.store.usable:
            value = self.engine.l1_get(self.engine.key(key, version), _MISSING)
            if value is not _MISSING:
                return value
        return self.get_from_redis(key, default, version)

    def get_from_redis(self, key, default=None, version=None):
        """``get`` after an L1 miss (or with the L1 bypassed): reads Redis, and fills the
        L1 unless an invalidation of the key arrived while the read was in flight."""
        read = self._read_plan([self.engine.key(key, version)])
        replies = self.policy.run(self.wire.execute_many, read.commands, write=read.primary,
                                  default=None)
        value = self._read_finish(read, replies)[0]
        return default if value is _MISSING else value

    async def aget(self, key, default=None, version=None):
        k = self.engine.key(key, version)
        if self.l1 and self.store.usable:  # a hit is served without awaiting anything
            value = self.engine.l1_get(k, _MISSING)
            if value is not _MISSING:
                return value
        read = self._read_plan([k])
        replies = await self.policy.arun(self.wire.aexecute_many, self._aclient(read.primary),
                                         read.commands, default=None)
        value = self._read_finish(read, replies)[0]
        return default if value is _MISSING else value

    def get_many(self, keys: Iterable, version=None) -> dict:
        out, keys, finals = self._many_from_l1(keys, version)
        if finals:
            read = self._read_plan(finals)
            replies = self.policy.run(self.wire.execute_many, read.commands,
                                      write=read.primary, default=None)
            self._collect(out, keys, self._read_finish(read, replies))
        return out

    async def aget_many(self, keys: Iterable, version=None) -> dict:
        out, keys, finals = self._many_from_l1(keys, version)
        if finals:
            read = self._read_plan(finals)
            replies = await self.policy.arun(self.wire.aexecute_many,
                                             self._aclient(read.primary), read.commands,
                                             default=None)
            self._collect(out, keys, self._read_finish(read, replies))
        return out

    def _many_from_l1(self, keys: Iterable, version) -> tuple[dict, list, list[str]]:
        """The L1 hits of a get_many, and the keys (user, final) left for Redis."""
        keys = list(keys)
        if not keys:
            return {}, [], []
        finals = self.engine.keys_of(keys, version)
        out: dict = {}
        if not (self.l1 and self.store.usable):
            return out, keys, finals
        rest_keys, rest_finals = [], []
        for key, k in zip(keys, finals, strict=True):
            value = self.engine.l1_get(k, _MISSING)
            if value is _MISSING:
                rest_keys.append(key)
                rest_finals.append(k)
            else:
                out[key] = value
        return out, rest_keys, rest_finals

    @staticmethod
    def _collect(out: dict, keys: list, values: list) -> None:
        for key, value in zip(keys, values, strict=True):
            if value is not _MISSING:
                out[key] = value

    def _read_plan(self, finals: list[str]) -> _ReadPlan:
        """Prepare a read of ``finals``: with the L1 usable, each key's invalidation token
        is taken before the read is sent, and the TTLs are fetched in the same round trip
        (one ``MGET`` per slot then a ``PTTL`` per key), from the primary (a replica may
        not have a write whose invalidation was already applied here). Without it, one
        ``MGET`` per slot, from a replica if there is one."""
        tokens = None
        if self.l1:
            self.listener.ensure_running()
            if self.store.usable:
                tokens = [self.engine.l1_token(k) for k in finals]
        if self.clients.is_cluster and len(finals) > 1:
            groups = list(_index_groups(finals).values())
        else:
            groups = [list(range(len(finals)))]
        commands: list[tuple] = []
        for indexes in groups:
            commands.append(("MGET", *(finals[i] for i in indexes)))
            if tokens is not None:
                commands.extend(("PTTL", finals[i]) for i in indexes)
        return _ReadPlan(finals, tokens, groups, commands)

    def _read_finish(self, read: _ReadPlan, replies: list | None) -> list:
        """The values read (``_MISSING`` for a miss), counted; each kept in the L1 when the
        read began under a token and no invalidation of its key has arrived since."""
        finals = read.finals
        values: list = [_MISSING] * len(finals)
        if replies is None:  # Redis unreachable: misses
            self.misses += len(finals)
            return values
        tokens = read.tokens
        engine = self.engine
        at = 0
        for indexes in read.groups:
            raws = replies[at]
            at += 1
            if tokens is not None:
                ttls = replies[at:at + len(indexes)]
                at += len(indexes)
            for n, i in enumerate(indexes):
                raw = raws[n]
                if raw is None:
                    continue
                k = finals[i]
                value = self._decode(raw, k)
                if value is _MISSING:
                    continue
                values[i] = value
                if tokens is not None and len(raw) <= self.l1_max_item_bytes:
                    ttl = ttls[n]
                    engine.l1_fill(k, value, self._l1_seconds(None if ttl == -1 else ttl),
                                   tokens[i])
        found = sum(1 for v in values if v is not _MISSING)
        self.hits += found
        self.misses += len(finals) - found
        return values

    def has_key(self, key, version=None) -> bool:
        k = self.engine.key(key, version)
        return bool(self.policy.run(self._read, "EXISTS", k, default=0))

    def pttl(self, key, version=None) -> int:
        k = self.engine.key(key, version)
        return self.policy.run(self._read, "PTTL", k, default=-2)

    def keys(self, pattern: str) -> list[str]:
        """Final keys matching ``pattern``. A key that is not UTF-8 cannot have been made by
        a cache (its keys are str): another client wrote it, and it is skipped (and counted
        in ``undecodable_keys``) instead of failing the whole listing."""
        def scan() -> list[str]:
            found, skipped = [], 0
            for k in scan_keys(self._client(False), match=pattern):
                try:
                    found.append(k.decode("utf-8"))
                except UnicodeDecodeError:
                    skipped += 1
            if skipped:
                self.undecodable_keys += skipped
                logger.warning("%d key(s) matching %r are not UTF-8 (written by another "
                               "client?): skipped", skipped, pattern)
            return found

        return self.policy.run(scan, default=[])

    # ------------------------------------------------------------------ writes

    # set and set_many (and their async twins): prepare (encode everything, take the
    # L1 tokens) -> one round trip -> finish (the L1 takes what Redis accepted).

    def _set_plan(self, key, value, timeout, version) -> _WritePlan:
        data = self.engine.dumps(value)
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        if seconds is not None and seconds <= 0:
            return _WritePlan([k], [value], [data], None, [None], [("DEL", k)], False)
        px = None if seconds is None else _px(seconds)
        command = ("SET", k, data) if px is None else ("SET", k, data, "PX", px)
        return _WritePlan([k], [value], [data], px, [self._token(k)], [command], True)

    def _set_many_plan(self, data: dict, timeout, version) -> _WritePlan:
        """All values are encoded before any I/O, so an unserializable one writes nothing."""
        finals = self.engine.keys_of(list(data), version)
        values = list(data.values())
        blobs = [self.engine.dumps(v) for v in values]
        seconds = self._seconds(timeout)
        if seconds is not None and seconds <= 0:
            return _WritePlan(finals, values, blobs, None, [None] * len(finals),
                              [("DEL", k) for k in finals], False)
        px = None if seconds is None else _px(seconds)
        tail = () if px is None else ("PX", px)
        return _WritePlan(finals, values, blobs, px, [self._token(k) for k in finals],
                          [("SET", k, blob, *tail) for k, blob in zip(finals, blobs, strict=True)],
                          True)

    def _write_finish(self, plan: _WritePlan, replies: list | None) -> bool:
        """After the round trip (``replies`` None: it failed): the L1 keeps each value
        Redis stored, and drops its copy of every other key written."""
        ok = replies is not None
        if self.l1:
            for k, value, blob, token in zip(plan.finals, plan.values, plan.blobs, plan.tokens,
                                             strict=True):
                if ok and plan.stores:
                    self._wrote(k, token, value, len(blob), plan.px)
                else:
                    self._changed(k)
        return ok

    def set(self, key, value, timeout, version=None) -> None:
        plan = self._set_plan(key, value, timeout, version)
        replies = None
        try:
            replies = self.policy.run(self.wire.execute_many, plan.commands, write=True)
        finally:
            self._write_finish(plan, replies)

    async def aset(self, key, value, timeout, version=None) -> None:
        plan = self._set_plan(key, value, timeout, version)
        replies = None
        try:
            replies = await self.policy.arun(self.wire.aexecute_many, self._aclient(),
                                             plan.commands, write=True)
        finally:
            self._write_finish(plan, replies)

    def set_many(self, data: dict, timeout, version=None) -> list:
        if not data:
            return []
        plan = self._set_many_plan(data, timeout, version)
        replies = None
        try:
            replies = self.policy.run(self.wire.execute_many, plan.commands, write=True)
        finally:
            ok = self._write_finish(plan, replies)
        return [] if ok or not plan.stores else list(data)

    async def aset_many(self, data: dict, timeout, version=None) -> list:
        if not data:
            return []
        plan = self._set_many_plan(data, timeout, version)
        replies = None
        try:
            replies = await self.policy.arun(self.wire.aexecute_many, self._aclient(),
                                             plan.commands, write=True)
        finally:
            ok = self._write_finish(plan, replies)
        return [] if ok or not plan.stores else list(data)

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

    def delete(self, key, version=None) -> bool:
        k = self.engine.key(key, version)
        try:
            return bool(self.policy.run(self._write, "DEL", k, write=True, default=0))
        finally:
            self._changed(k)

    def delete_many(self, keys: Iterable, version=None) -> None:
        finals = self.engine.keys_of(list(keys), version)
        if finals:
            self._delete_finals(finals)

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
                    return None  # Redis unreachable (IGNORE_EXCEPTIONS): as django-redis
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
        raw = self.policy.run(client.get, k, default=_MISSING)
        if raw is _MISSING:
            return None  # Redis unreachable (IGNORE_EXCEPTIONS)
        value = _MISSING if raw is None else self._decode(raw, k)
        if value is _MISSING:
            raise ValueError(f"Key '{key}' not found")
        new = value + delta
        done = self.policy.run(client.set, k, self.engine.dumps(new), keepttl=True, xx=True,
                               write=True, default=_MISSING)
        if done is _MISSING:
            return None  # the write was dropped
        if not done:
            raise ValueError(f"Key '{key}' not found")  # deleted meanwhile
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

    def namespace(self) -> str:
        """The glob matching every key this cache makes and no other: ``<prefix>:*`` (all
        versions) with Django's key function, whatever the prefix (an empty one included:
        its keys start with ``:``). With a custom ``KEY_FUNCTION``, the keys it makes for
        the current version: its output for a marker key, the marker replaced by ``*``;
        a function whose output does not end with the key, or that adds nothing before
        it, names no namespace of its own, and ``clear()`` refuses rather than guess."""
        if not self._custom_keys:
            return glob_escape(self._key_prefix) + ":*"
        final = self.engine.key(_NAMESPACE_MARK, None)
        head = final[:-len(_NAMESPACE_MARK)]
        if not final.endswith(_NAMESPACE_MARK) or not head:
            raise ImproperlyConfigured(
                f"KEY_FUNCTION made {final!r} for the key {_NAMESPACE_MARK!r}: clear() and "
                "pattern operations need a key function that puts the key last, after a "
                "non-empty prefix of its own (e.g. Django's '<prefix>:<version>:<key>')")
        return glob_escape(head) + "*"

    def clear(self) -> None:
        """Deletes this cache's keys (``namespace()``), never FLUSHDB: other apps, other
        FastCache prefixes and the rate limiter may share the database."""
        self.delete_matching(self.namespace())

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
                                                default=_MISSING)
                if result is _MISSING:
                    return None  # Redis unreachable (IGNORE_EXCEPTIONS): as django-redis
                if result is None:
                    raise ValueError(f"Key '{key}' not found")
                return result
            except _ResponseError as exc:
                if not any(text in str(exc) for text in _NOT_AN_INTEGER):
                    raise
        raw = await self.policy.arun(client.get, k, default=_MISSING)
        if raw is _MISSING:
            return None
        value = _MISSING if raw is None else self._decode(raw, k)
        if value is _MISSING:
            raise ValueError(f"Key '{key}' not found")
        new = value + delta
        done = await self.policy.arun(client.set, k, self.engine.dumps(new), keepttl=True,
                                      xx=True, write=True, default=_MISSING)
        if done is _MISSING:
            return None
        if not done:
            raise ValueError(f"Key '{key}' not found")
        return new

    async def aclear(self) -> None:
        client = self._aclient()

        pattern = self.namespace()

        async def run():
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
            "undecodable_keys": self.undecodable_keys,
            "redis_mode": self.clients.mode,
            **self.policy.stats(),
            **(self.listener.stats() if self.listener is not None else {}),
            **({"l1_" + k: v for k, v in self.store.coherence_stats().items()} if self.l1 else {}),
        }

    def close(self) -> None:
        """Connections stay pooled across requests, as Django's RedisCache keeps them."""

