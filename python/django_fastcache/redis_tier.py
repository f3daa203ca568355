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

import _thread
import logging
import os
import time
import uuid
import weakref
from collections.abc import Generator, Iterable
from typing import Any, NamedTuple

from django.core.exceptions import ImproperlyConfigured
from redis import exceptions as _rx

from . import _core
from ._ratelog import shared_log
from .coherence import listener_for
from .errors import DecodeError
from .policy import FailurePolicy
from .redis_client import RedisClients, ascan_keys, group_by_slot, key_slot, scan_keys
from .redis_lock import RedisLock
from .wire import Script, Wire

__all__ = ["RedisLock", "RedisTier", "Step", "glob_escape"]

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
_INCR_SCRIPT, _EXPIRE_SCRIPT, _RELEASE_SCRIPT = Script(_INCR), Script(_EXPIRE), Script(_RELEASE)
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


class Step(NamedTuple):
    """One I/O step of an operation: commands sent in one round trip. ``write``: the step
    changes data (a failure drops a write); ``primary``: send it to the primary (else a
    read replica may answer)."""

    commands: list[tuple]
    write: bool = True
    primary: bool = True


#: An operation: a generator that yields its I/O steps and gets back each step's replies
#: (None: Redis unreachable and the failure policy said "carry on"; an error reply or an
#: outage the policy raises is thrown in), and returns the operation's result.
Op = Generator[Step, Any, Any]


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


def _evalsha(script: Script, keys: list, args: list) -> tuple:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


_BY_SHA = {script.sha: script for script in (_INCR_SCRIPT, _EXPIRE_SCRIPT, _RELEASE_SCRIPT)}


_NOT_DONE = object()


class _Flight:
    """One read of a key from Redis that concurrent misses of that key wait for: the
    leader's token (taken before its read was sent), its lock (held while in flight) and
    its result (``_MISSING`` for a miss, ``_NOT_DONE`` if it raised)."""

    __slots__ = ("lock", "token", "value")

    def __init__(self, token: int) -> None:
        self.lock = _thread.allocate_lock()
        self.lock.acquire()
        self.token = token
        self.value: Any = _NOT_DONE


_tiers: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Reads in flight in the parent's other threads never finish here.
    for tier in list(_tiers):
        tier._flights = {}


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        # Every command goes through one wire (held connections on a single node or the
        # Sentinel primary, redis-py's routing on a cluster or with read replicas).
        self.wire = Wire(clients.client,
                         direct=clients.mode != "cluster" and len(clients.config.nodes) <= 1,
                         retries=clients.config.retries,
                         retry_on_timeout=clients.config.retry_on_timeout)
        # A hostile or foreign value can be read on every request: one line per interval.
        self._decode_log = shared_log(policy, logger, policy.log_interval)
        # Reads of a key in flight, that concurrent misses of the key wait for (get only),
        # at most for as long as the leader's read may take before it fails.
        self._flights: dict[str, _Flight] = {}
        timeout = clients.config.connection_kwargs.get("socket_timeout") or 1.0
        self._flight_wait = float(timeout) * (1 + clients.config.retries)
        _tiers.add(self)

    def follow_keys(self, key_prefix: str, custom_key_func: bool) -> None:
        """Tells the listener which keys this cache makes, so that Redis tracks them: the
        ones starting with ``key_prefix + ":"``, or every key with a custom key function."""
        self._key_prefix = key_prefix
        self._custom_keys = custom_key_func
        if self.listener is not None:
            self.listener.track("" if custom_key_func else key_prefix + ":")

    # ------------------------------------------------------------------ running operations
    # Each operation is written once, as a generator (prepare -> yield its I/O steps ->
    # finish); run() and arun() differ only in how a step reaches Redis.

    def _drive(self, op: Op) -> Any:
        """Runs ``op`` on this thread's wire, each step through the failure policy."""
        try:
            step = next(op)
            while True:
                try:
                    replies = self.policy.run(self._send, step, write=step.write,
                                              default=None)
                except BaseException as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(replies)
        except StopIteration as stop:
            return stop.value

    async def _adrive(self, op: Op) -> Any:
        """Runs ``op`` on the running loop's ``redis.asyncio`` client."""
        try:
            step = next(op)
            while True:
                try:
                    replies = await self.policy.arun(self._asend, step, write=step.write,
                                                     default=None)
                except BaseException as exc:
                    step = op.throw(exc)
                else:
                    step = op.send(replies)
        except StopIteration as stop:
            return stop.value

    def _send(self, step: Step) -> list:
        try:
            return self.wire.execute_many(step.commands, write=step.primary)
        except _rx.NoScriptError:
            # After SCRIPT FLUSH, a restart or a failover: load the script, send again (a
            # script step is one command, so nothing else ran twice).
            if len(step.commands) != 1:
                raise
            self.clients.client(True).script_load(_BY_SHA[step.commands[0][1]].source)
            return self.wire.execute_many(step.commands, write=step.primary)

    async def _asend(self, step: Step) -> list:
        client = self.clients.async_client(write=step.primary)
        try:
            return await self.wire.aexecute_many(client, step.commands)
        except _rx.NoScriptError:
            if len(step.commands) != 1:
                raise
            await client.script_load(_BY_SHA[step.commands[0][1]].source)
            return await self.wire.aexecute_many(client, step.commands)

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

    def _command_op(self, commands: list[tuple], write: bool, keys: Iterable[str],
                    default: Any) -> Op:
        try:
            replies = yield Step(list(commands), write, write)
        finally:
            if write:
                for k in keys:
                    self._changed(k)
        return default if replies is None else replies

    def run(self, *command, write: bool = True, keys: Iterable[str] = (), default=None):
        """One command (final keys in it) through the failure policy: its raw reply, or
        ``default`` when Redis is unreachable and ``IGNORE_EXCEPTIONS`` is on. ``keys``: the
        final keys a write changes, whose L1 copies are dropped. Reads go to a replica
        when there is one."""
        replies = self._drive(self._command_op([command], write, keys, None))
        return default if replies is None else replies[0]

    def run_many(self, commands: list[tuple], *, write: bool = True, keys: Iterable[str] = (),
                 default=None):
        """Commands in one round trip (see :meth:`run`); their replies, in order (on a
        cluster each command is routed by its keys; a multi-key command must stay in one
        slot)."""
        return self._drive(self._command_op(commands, write, keys, default))

    async def arun(self, *command, write: bool = True, keys: Iterable[str] = (), default=None):
        """:meth:`run` on the running loop's ``redis.asyncio`` client."""
        replies = await self._adrive(self._command_op([command], write, keys, None))
        return default if replies is None else replies[0]

    async def arun_many(self, commands: list[tuple], *, write: bool = True,
                        keys: Iterable[str] = (), default=None):
        return await self._adrive(self._command_op(commands, write, keys, default))

    # ------------------------------------------------------------------ helpers

    def _decode(self, raw: bytes, key: str) -> Any:
        try:
            return self.engine.loads(raw)
        except DecodeError as exc:
            self.decode_errors += 1
            self._decode_log.warning(
                "cache key %r holds a value that cannot be read (%s: %s): served as a miss",
                key, type(exc).__name__, exc)
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
        L1 unless an invalidation of the key arrived while the read was in flight.

        With the L1 usable, concurrent misses of one key in this process share one read
        (see :class:`_Flight`): the first thread reads Redis, the others wait for it with
        the GIL released. Without that, after an invalidation of a hot key every busy
        thread sent its own read and then waited for the GIL, up to a whole switch
        interval (5 ms) under CPU-bound threads, before its value could be returned."""
        k = self.engine.key(key, version)
        if not (self.l1 and self.store.usable):
            return self._drive(self._get_op(k, default))
        flights = self._flights
        token = self.engine.l1_token(k)
        flight = flights.get(k)
        if flight is None:
            mine = _Flight(token)
            flight = flights.setdefault(k, mine)
            if flight is mine:
                try:
                    value = mine.value = self._drive(self._get_op(k, _MISSING))
                    return default if value is _MISSING else value
                finally:
                    del flights[k]
                    mine.lock.release()
        if flight.lock.acquire(timeout=self._flight_wait):
            flight.lock.release()
            # What the leader kept is read from the L1 (a copy where values are copied on
            # read, as for any hit).
            value = self.engine.l1_get(k, _MISSING)
            if value is not _MISSING:
                return value
            # A miss the leader found is shared if its read was sent after no fill, write
            # or invalidation of the bucket that came before this call began: every read
            # that completed before then is no newer than the leader's, so reads stay
            # monotonic (core/coherence.hpp, rule 2).
            if flight.token == token and flight.value is _MISSING:
                self.misses += 1
                return default
        # The leader failed, its value was not kept (too large, or refused), or waiting
        # took too long: read for ourselves.
        return self._drive(self._get_op(k, default))

    async def aget(self, key, default=None, version=None):
        k = self.engine.key(key, version)
        if self.l1 and self.store.usable:  # a hit is served without awaiting anything
            value = self.engine.l1_get(k, _MISSING)
            if value is not _MISSING:
                return value
        return await self._adrive(self._get_op(k, default))

    def _get_op(self, k: str, default) -> Op:
        read = self._read_plan([k])
        replies = yield Step(read.commands, False, read.primary)
        value = self._read_finish(read, replies)[0]
        return default if value is _MISSING else value

    def get_many(self, keys: Iterable, version=None) -> dict:
        return self._drive(self._get_many_op(keys, version))

    async def aget_many(self, keys: Iterable, version=None) -> dict:
        return await self._adrive(self._get_many_op(keys, version))

    def get_many_from_redis(self, keys: Iterable, version=None) -> dict:
        """``get_many`` from the primary, whatever the L1 holds, and without filling it
        (one round trip, ``MGET`` only): for a reader that may not trust an invalidation
        still in flight (the ORM cache's strict mode)."""
        return self._drive(self._primary_get_many_op(list(keys), version))

    def _primary_get_many_op(self, keys: list, version) -> Op:
        if not keys:
            return {}
        finals = self.engine.keys_of(keys, version)
        if self.clients.is_cluster and len(finals) > 1:
            groups = list(_index_groups(finals).values())
        else:
            groups = [list(range(len(finals)))]
        read = _ReadPlan(finals, None, groups,
                         [("MGET", *(finals[i] for i in indexes)) for indexes in groups])
        replies = yield Step(read.commands, False, True)
        return {key: value for key, value in zip(keys, self._read_finish(read, replies),
                                                 strict=True) if value is not _MISSING}

    def _get_many_op(self, keys: Iterable, version) -> Op:
        keys = list(keys)
        if not keys:
            return {}
        finals = self.engine.keys_of(keys, version)
        out: dict = {}
        if self.l1 and self.store.usable:
            rest_keys, rest_finals = [], []
            for key, k in zip(keys, finals, strict=True):
                value = self.engine.l1_get(k, _MISSING)
                if value is _MISSING:
                    rest_keys.append(key)
                    rest_finals.append(k)
                else:
                    out[key] = value
            if not rest_finals:
                return out
            keys, finals = rest_keys, rest_finals
        read = self._read_plan(finals)
        replies = yield Step(read.commands, False, read.primary)
        for key, value in zip(keys, self._read_finish(read, replies), strict=True):
            if value is not _MISSING:
                out[key] = value
        return out

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
            if read.tokens is not None:
                for k in finals:
                    self.engine.l1_invalidate(k)
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
                k = finals[i]
                value = _MISSING if raw is None else self._decode(raw, k)
                if value is not _MISSING:
                    values[i] = value
                if tokens is None:
                    continue
                # Every read taken under a token ends in a fill or an invalidation: one that
                # keeps nothing still bumps the key's token, so that an older fill in flight
                # cannot make a later read go backwards (core/coherence.hpp).
                if value is not _MISSING and len(raw) <= self.l1_max_item_bytes:
                    ttl = ttls[n]
                    engine.l1_fill(k, value, self._l1_seconds(None if ttl == -1 else ttl),
                                   tokens[i])
                else:
                    engine.l1_invalidate(k)
        found = sum(1 for v in values if v is not _MISSING)
        self.hits += found
        self.misses += len(finals) - found
        return values

    def has_key(self, key, version=None) -> bool:
        return self._drive(self._exists_op(self.engine.key(key, version)))

    async def ahas_key(self, key, version=None) -> bool:
        return await self._adrive(self._exists_op(self.engine.key(key, version)))

    def _exists_op(self, k: str) -> Op:
        replies = yield Step([("EXISTS", k)], False, False)
        return bool(replies and replies[0])

    def pttl(self, key, version=None) -> int:
        return self.run("PTTL", self.engine.key(key, version), write=False, default=-2)

    def keys(self, pattern: str) -> list[str]:
        """Final keys matching ``pattern``. A key that is not UTF-8 cannot have been made by
        a cache (its keys are str): another client wrote it, and it is skipped (and counted
        in ``undecodable_keys``) instead of failing the whole listing."""
        def scan() -> list[str]:
            found, skipped = [], 0
            for k in scan_keys(self.clients.client(False), match=pattern):
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
    # prepare (encode everything, take the L1 tokens) -> one round trip -> finish (the L1
    # takes what Redis accepted, and drops its copy of anything else written).

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

    def _write_op(self, plan: _WritePlan) -> Op:
        replies = None
        try:
            replies = yield Step(plan.commands)
        finally:
            ok = replies is not None
            if self.l1:
                for k, value, blob, token in zip(plan.finals, plan.values, plan.blobs,
                                                 plan.tokens, strict=True):
                    if ok and plan.stores:
                        self._wrote(k, token, value, len(blob), plan.px)
                    else:
                        self._changed(k)
        if ok and not plan.stores:  # a timeout <= 0 deletes: whether a key went (django-redis)
            return any(replies)
        return ok

    def set(self, key, value, timeout, version=None) -> bool:
        """True once stored; with a timeout <= 0, whether a key was deleted (django-redis)."""
        return self._drive(self._write_op(self._set_plan(key, value, timeout, version)))

    async def aset(self, key, value, timeout, version=None) -> bool:
        return await self._adrive(self._write_op(self._set_plan(key, value, timeout, version)))

    def set_many(self, data: dict, timeout, version=None) -> list:
        if not data:
            return []
        plan = self._set_many_plan(data, timeout, version)
        ok = self._drive(self._write_op(plan))
        return [] if ok or not plan.stores else list(data)

    async def aset_many(self, data: dict, timeout, version=None) -> list:
        if not data:
            return []
        plan = self._set_many_plan(data, timeout, version)
        ok = await self._adrive(self._write_op(plan))
        return [] if ok or not plan.stores else list(data)

    def add(self, key, value, timeout, version=None) -> bool:
        return self._drive(self._add_op(key, value, timeout, version))

    async def aadd(self, key, value, timeout, version=None) -> bool:
        return await self._adrive(self._add_op(key, value, timeout, version))

    def _add_op(self, key, value, timeout, version) -> Op:
        data = self.engine.dumps(value)
        k = self.engine.key(key, version)
        seconds = self._seconds(timeout)
        if seconds is not None and seconds <= 0:
            # Django: an add with a zero timeout succeeds if the key was free, stores nothing.
            replies = yield Step([("SET", k, data, "NX")])
            added = bool(replies and replies[0])
            if added:
                yield Step([("DEL", k)])
            return added
        px = None if seconds is None else _px(seconds)
        command = ("SET", k, data, "NX") if px is None else ("SET", k, data, "NX", "PX", px)
        token = self._token(k)
        added = False
        try:
            replies = yield Step([command])
            added = bool(replies and replies[0])
        finally:
            if added:
                self._wrote(k, token, value, len(data), px)
        return added

    def delete(self, key, version=None) -> bool:
        return self._drive(self._delete_op([self.engine.key(key, version)]))

    async def adelete(self, key, version=None) -> bool:
        return await self._adrive(self._delete_op([self.engine.key(key, version)]))

    def delete_many(self, keys: Iterable, version=None) -> int:
        """How many of the keys existed (django-redis)."""
        finals = self.engine.keys_of(list(keys), version)
        return int(self._drive(self._delete_op(finals))) if finals else 0

    async def adelete_many(self, keys: Iterable, version=None) -> None:
        finals = self.engine.keys_of(list(keys), version)
        if finals:
            await self._adrive(self._delete_op(finals))

    def _delete_op(self, finals: list) -> Op:
        """``DEL`` of one key (True if it existed); ``UNLINK`` in batches (per slot on a
        cluster) of several (how many existed)."""
        if len(finals) == 1:
            commands = [("DEL", finals[0])]
        elif self.clients.is_cluster:
            commands = [("UNLINK", *group) for group in group_by_slot(finals).values()]
        else:
            commands = [("UNLINK", *finals[i:i + _BATCH]) for i in range(0, len(finals), _BATCH)]
        try:
            replies = yield Step(commands)
        finally:
            for k in finals:
                self._changed(k)
        if replies is None:
            return False if len(finals) == 1 else 0
        return bool(replies[0]) if len(finals) == 1 else sum(replies)

    def touch(self, key, timeout, version=None) -> bool:
        return self._drive(self._expire_op(self.engine.key(key, version),
                                           self._touch_args(timeout)))

    async def atouch(self, key, timeout, version=None) -> bool:
        return await self._adrive(self._expire_op(self.engine.key(key, version),
                                                  self._touch_args(timeout)))

    def _touch_args(self, timeout) -> tuple:
        seconds = self._seconds(timeout)
        if seconds is None:
            return ("persist", 0)
        return ("px", _px(seconds) if seconds > 0 else 0)

    def expire_at(self, key, when: float | None, version=None) -> bool:
        k = self.engine.key(key, version)
        args = ("persist", 0) if when is None else ("pxat", int(when * 1000))
        return self._drive(self._expire_op(k, args))

    def _expire_op(self, k: str, args: tuple) -> Op:
        try:
            replies = yield Step([_evalsha(_EXPIRE_SCRIPT, [k], list(args))])
        finally:
            self._changed(k)
        return bool(replies and replies[0])

    def incr(self, key, delta, version=None):
        return self._drive(self._incr_op(self.engine.key(key, version), key, delta))

    async def aincr(self, key, delta, version=None):
        return await self._adrive(self._incr_op(self.engine.key(key, version), key, delta))

    def _incr_op(self, k: str, key, delta) -> Op:
        """One atomic script when the value is a Redis integer. For values Redis cannot
        INCRBY (floats, Decimals, ints beyond 64 bits): read, add and write back keeping
        the TTL, as Django's BaseCache.incr does (not atomic). Redis unreachable (with
        ``IGNORE_EXCEPTIONS``): None, as django-redis answers, never "not found"."""
        try:
            if isinstance(delta, int) and not isinstance(delta, bool) and -(2**63) <= delta < 2**63:
                try:
                    replies = yield Step([_evalsha(_INCR_SCRIPT, [k], [delta])])
                except _rx.ResponseError as exc:
                    if not any(text in str(exc) for text in _NOT_AN_INTEGER):
                        raise
                else:
                    if replies is None:
                        return None
                    if replies[0] is None:
                        raise ValueError(f"Key '{key}' not found")
                    return replies[0]
            replies = yield Step([("GET", k)], False, True)
            if replies is None:
                return None
            value = _MISSING if replies[0] is None else self._decode(replies[0], k)
            if value is _MISSING:
                raise ValueError(f"Key '{key}' not found")
            new = value + delta
            replies = yield Step([("SET", k, self.engine.dumps(new), "KEEPTTL", "XX")])
            if replies is None:
                return None  # the write was dropped
            if not replies[0]:
                raise ValueError(f"Key '{key}' not found")  # deleted meanwhile
            return new
        finally:
            self._changed(k)

    # ------------------------------------------------------------------ namespace

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

    def delete_matching(self, pattern: str) -> int:
        """Deletes the keys matching ``pattern`` (SCAN on every primary, UNLINK in
        batches); how many were deleted."""
        def run() -> int:
            batch, deleted = [], 0
            for k in scan_keys(self.clients.client(True), match=pattern, count=_BATCH):
                batch.append(k)
                if len(batch) >= _BATCH:
                    deleted += self._unlink_now(batch)
                    batch = []
            if batch:
                deleted += self._unlink_now(batch)
            return deleted

        try:
            return self.policy.run(run, write=True, default=0)
        finally:
            self._changed_all()

    def _unlink_now(self, keys: list[bytes]) -> int:
        groups = group_by_slot(keys).values() if self.clients.is_cluster else [keys]
        return sum(self.wire.execute_many([("UNLINK", *group) for group in groups]))

    def clear(self) -> None:
        """Deletes this cache's keys (``namespace()``), never FLUSHDB: other apps, other
        FastCache prefixes and the rate limiter may share the database."""
        self.delete_matching(self.namespace())

    async def aclear(self) -> None:
        client = self.clients.async_client(True)
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
        groups = group_by_slot(keys).values() if self.clients.is_cluster else [keys]
        await self.wire.aexecute_many(client, [("UNLINK", *group) for group in groups])

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
        won = bool(self.run("SET", lease, token, "NX", "PX", _px(self.lock_timeout),
                            default=True))
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
                self._drive(self._command_op([_evalsha(_RELEASE_SCRIPT, [lease], [token])],
                                             True, (), None))

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
