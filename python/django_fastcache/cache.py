"""``FastCache``: a Django cache backend with an in-process C++ tier.

With no ``LOCATION`` (or a plain name, as LocMemCache takes) it runs on the embedded
default: an L1 store in this process, shared by every backend instance, thread and alias
with the same ``LOCATION``. Each method is one call into ``django_fastcache._core``, which
builds and validates the key, reads the clock and touches the store; this module adapts
Django's API to it and holds policy (options, stampede protection, django-redis extras).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    BaseCache,
    CacheKeyWarning,
    default_key_func,
)
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import _bodies, _core
from . import tags as _tags
from ._config import option_bool, option_choice, option_int, option_number
from .compat import RedisClientAdapter, translate_options
from .errors import LockError, LockNotOwnedError
from .structures import StructureCommands

__all__ = ["FastCache", "LocalLock"]

_MISSING = object()
_ENVELOPE = _tags.ENVELOPE

# OPTIONS this backend understands, with their defaults. Anything else is a typo and is
# refused at start-up (Django's own backends ignore unknown options silently).
_DEFAULTS: dict[str, Any] = {
    "MAX_BYTES": 64 * 1024 * 1024,
    "MAX_ENTRIES": 1_000_000,
    "CULL_FREQUENCY": 3,
    "SHARDS": 16,
    "SERIALIZER": "msgpack",
    "PICKLE": "signed",
    "SIGNING_KEY": None,
    "SIGNING_KEY_FALLBACKS": None,
    "PICKLE_PROTOCOL": pickle.HIGHEST_PROTOCOL,
    "COMPRESSOR": "zlib",
    "COMPRESS_MIN_BYTES": 4096,
    "COMPRESS_LEVEL": None,  # None: the compressor's own default (_COMPRESS_LEVELS)
    "MAX_VALUE_BYTES": 1024 * 1024,
    "MAX_VALUE_OBJECTS": 65536,
    "REVERSE_KEY_FUNCTION": None,
    "GET_OR_SET_WAIT": 30.0,
}

# OPTIONS read by the Redis tier and its failure policy (validated where they are read).
_REDIS_ONLY: dict[str, Any] = {
    "L1": True,
    "L1_MAX_BYTES": None,  # None: MAX_BYTES
    "L1_MAX_ITEM_BYTES": 256 * 1024,
    "L1_TIMEOUT": 300.0,
    "GET_OR_SET_LOCK_TIMEOUT": 10.0,
    "IGNORE_EXCEPTIONS": True,
    "ERROR_LOG_INTERVAL": 30.0,
    "CIRCUIT_BREAKER_THRESHOLD": 5,
    "CIRCUIT_BREAKER_RESET_TIMEOUT": 1.0,
}

# One store per LOCATION in this process, as LocMemCache keeps one dict per LOCATION:
# Django builds a backend instance per thread and several aliases may share a location.
_stores: dict[tuple, tuple[_core.Store, _Flights]] = {}
_stores_lock = threading.Lock()
# Redis clients (connection pools) and failure policy (breaker) per LOCATION and OPTIONS.
_redis_shared: dict[tuple, tuple] = {}


class _Flights:
    """Per-key locks so that one thread computes a missing ``get_or_set`` value while the
    others wait for it, instead of every thread computing it at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, list] = {}

    @contextmanager
    def hold(self, key: str, wait: float | None) -> Iterator[bool]:
        with self._lock:
            entry = self._held.get(key)
            if entry is None:
                entry = self._held[key] = [threading.Lock(), 0]
            entry[1] += 1
        acquired = entry[0].acquire(timeout=-1 if wait is None else wait)
        try:
            yield acquired
        finally:
            if acquired:
                entry[0].release()
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._held[key]


# Per compressor: (lowest, highest, default) COMPRESS_LEVEL.
_COMPRESS_LEVELS = {"zlib": (-1, 9, 6), "zstd": (-7, 22, 3), "lz4": (0, 16, 0), "none": (0, 0, 0)}
_COMPRESSOR_IDS = {"zstd": 1, "lz4": 2}
# The embedded default's signing key: its values never leave this process, so a key of its
# own (made on first use) protects them as well as one derived from SECRET_KEY would, and
# a script with no SECRET_KEY works, as it does with LocMemCache.
_process_key: list[bytes] = []


def _derive(key: str | bytes) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    # A key of its own, so a leak of cached data says nothing about SECRET_KEY's other uses.
    return hashlib.sha256(b"django_fastcache.pickle-signing:" + key).digest()


def _signing_keys(options: dict, redis: bool) -> tuple[bytes, list[bytes]]:
    """The key that signs pickled values and the older keys still accepted when reading:
    ``SIGNING_KEY`` and ``SIGNING_KEY_FALLBACKS``, else ``SECRET_KEY`` and
    ``SECRET_KEY_FALLBACKS`` (Redis), else a key of this process (embedded default)."""
    key = options.get("SIGNING_KEY")
    fallbacks = options.get("SIGNING_KEY_FALLBACKS")
    if key is None:
        if fallbacks is not None:
            raise ImproperlyConfigured(
                "FastCache OPTIONS['SIGNING_KEY_FALLBACKS'] needs OPTIONS['SIGNING_KEY'] "
                "(without it, SECRET_KEY_FALLBACKS is used)")
        if not redis:
            if not _process_key:
                _process_key.append(os.urandom(32))
            return _process_key[0], []
        from django.conf import settings

        try:
            secret = settings.SECRET_KEY
        except ImproperlyConfigured:  # Django refuses to read an empty SECRET_KEY
            secret = ""
        if not secret:
            raise ImproperlyConfigured(
                "FastCache signs pickled values in Redis with a key derived from SECRET_KEY: set "
                "SECRET_KEY, OPTIONS['SIGNING_KEY'], or OPTIONS['PICKLE'] = 'forbid'"
            )
        key = secret
        fallbacks = list(getattr(settings, "SECRET_KEY_FALLBACKS", None) or [])
    if not isinstance(key, (str, bytes)) or not key:
        raise ImproperlyConfigured(
            "FastCache OPTIONS['SIGNING_KEY'] must be a non-empty str or bytes")
    fallbacks = [] if fallbacks is None else fallbacks
    if (isinstance(fallbacks, (str, bytes)) or not isinstance(fallbacks, (list, tuple))
            or not all(isinstance(k, (str, bytes)) and k for k in fallbacks)):
        raise ImproperlyConfigured(
            "FastCache OPTIONS['SIGNING_KEY_FALLBACKS'] (or SECRET_KEY_FALLBACKS) must be a list "
            f"of non-empty str or bytes, not {fallbacks!r}")
    return _derive(key), [_derive(k) for k in fallbacks]


def _codec_options(options: dict, redis: bool = False) -> _core.Codec:
    serializer = option_choice(options, "SERIALIZER", _DEFAULTS["SERIALIZER"],
                               ("msgpack", "pickle", "json"))
    pickle_mode = option_choice(options, "PICKLE", _DEFAULTS["PICKLE"],
                                ("signed", "unsigned", "forbid"))
    if serializer == "pickle" and pickle_mode == "forbid":
        raise ImproperlyConfigured(
            "FastCache OPTIONS['SERIALIZER'] = 'pickle' cannot go with OPTIONS['PICKLE'] = 'forbid'"
        )
    protocol = option_int(options, "PICKLE_PROTOCOL", _DEFAULTS["PICKLE_PROTOCOL"], minimum=0)
    if protocol > pickle.HIGHEST_PROTOCOL:
        raise ImproperlyConfigured(
            f"FastCache OPTIONS['PICKLE_PROTOCOL'] must be <= {pickle.HIGHEST_PROTOCOL}, "
            f"not {protocol}"
        )
    compressor = option_choice(options, "COMPRESSOR", _DEFAULTS["COMPRESSOR"],
                               tuple(_COMPRESS_LEVELS))
    if compressor in _COMPRESSOR_IDS:
        try:
            _bodies.require(_COMPRESSOR_IDS[compressor])
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"FastCache OPTIONS['COMPRESSOR'] = {compressor!r}: {exc}") from exc
    compress_min = option_int(options, "COMPRESS_MIN_BYTES", _DEFAULTS["COMPRESS_MIN_BYTES"],
                              minimum=0, allow_none=True)
    lowest, highest, default_level = _COMPRESS_LEVELS[compressor]
    level = option_int(options, "COMPRESS_LEVEL", default_level, minimum=lowest, allow_none=True)
    level = default_level if level is None else level
    if level > highest:
        raise ImproperlyConfigured(
            f"FastCache OPTIONS['COMPRESS_LEVEL'] must be <= {highest} for {compressor}, "
            f"not {level}")
    max_value = option_int(options, "MAX_VALUE_BYTES", _DEFAULTS["MAX_VALUE_BYTES"], minimum=1024)
    max_objects = option_int(options, "MAX_VALUE_OBJECTS", _DEFAULTS["MAX_VALUE_OBJECTS"],
                             minimum=1, allow_none=True)
    key, fallbacks = _signing_keys(options, redis) if pickle_mode == "signed" else (b"", [])
    return _core.Codec(
        serializer=serializer,
        pickle=pickle_mode,
        signing_key=key,
        fallback_keys=fallbacks,
        compress_min_bytes=-1 if compress_min is None or compressor == "none" else compress_min,
        compressor=compressor,
        compress_level=level,
        pickle_protocol=protocol,
        max_value_bytes=max_value,
        max_value_objects=0 if max_objects is None else max_objects,  # 0: no bound
    )


class FastCache(StructureCommands, BaseCache):
    """A Django cache backend whose L1 tier is a C++ store in this process.

    ``CACHES = {"default": {"BACKEND": "django_fastcache.cache.FastCache"}}`` is all it
    takes. Values a caller gets back are theirs to mutate (as with LocMemCache); immutable
    values are handed out without a copy, JSON-like containers as a fresh structural copy,
    anything else is pickled on ``set`` and unpickled on each hit.
    """

    def __init__(self, location: str, params: dict) -> None:
        # django-redis's options and settings become ours (or are refused, naming ours).
        options = dict(params.get("OPTIONS") or {})
        redis = _is_redis(location, options)
        options, _ = translate_options(options, redis=redis)
        known = set(_DEFAULTS) | (set(_REDIS_ONLY) | _redis_options() if redis else set())
        unknown = sorted(set(options) - known)
        if unknown:
            raise ImproperlyConfigured(
                f"FastCache got unknown OPTIONS {', '.join(map(repr, unknown))}; "
                f"known options: {', '.join(sorted(known))}"
                + ("" if redis else " (Redis options need a Redis LOCATION)")
            )
        self._location = location or ""
        # The process-wide L1 store of this LOCATION: the whole cache on the embedded
        # default; in front of Redis, the coherent L1 (unless L1=False).
        store_options = options
        if redis:
            l1_max = option_int(options, "L1_MAX_BYTES", None, minimum=1, allow_none=True)
            if l1_max is not None:
                store_options = {**options, "MAX_BYTES": l1_max}
        self._store, self._flights = self._shared_store(
            f"redis:{location!r}" if redis else self._location, store_options)
        self._get_or_set_wait = option_number(
            options, "GET_OR_SET_WAIT", _DEFAULTS["GET_OR_SET_WAIT"], positive=False,
            allow_none=True)
        reverse = options.get("REVERSE_KEY_FUNCTION")
        top = params.get("REVERSE_KEY_FUNCTION")  # where django-redis reads it
        if top is not None:
            if reverse is not None and reverse != top:
                raise ImproperlyConfigured(
                    "FastCache got two REVERSE_KEY_FUNCTIONs (CACHES entry and its OPTIONS); "
                    "keep one")
            reverse = top
        self._reverse_key = import_string(reverse) if isinstance(reverse, str) else reverse
        self._engine = _core.Engine(
            store=self._store,
            key_prefix="",
            version=1,
            key_func=None,
            default_timeout=300,
            default_sentinel=DEFAULT_TIMEOUT,
            key_warning=CacheKeyWarning,
            codec=_codec_options(options, redis),
        )
        self._tier = None
        self._cache = self._engine  # what each operation calls: the engine or the Redis tier
        self._get = self._engine.fast_get()
        if redis:
            self._tier = self._redis_tier(location, options, params)
            self._cache = self._tier
            # L1 hits are answered in C++; misses (and a bypassed L1) go to Redis.
            self._get = (self._engine.coherent_get(self._tier.get_from_redis) if self._tier.l1
                         else self._tier.get)
        # BaseCache validates and sets key_prefix, version, key_func and default_timeout;
        # the properties below pass each on to the engine.
        super().__init__(params)
        self._max_entries = self._store.stats()["max_entries"]
        self._cull_frequency = self._store.stats()["cull_frequency"]

    def _redis_tier(self, location, options: dict, params: dict):
        from .policy import policy_from_options
        from .redis_client import REDIS_OPTIONS, RedisClients
        from .redis_tier import RedisTier

        # Pools and the breaker are per process, not per backend instance: Django builds an
        # instance per thread, and every thread should see Redis go down (or come back) at once.
        shared_key = (repr(location), repr(sorted(options.items(), key=lambda kv: kv[0])))
        with _stores_lock:
            shared = _redis_shared.get(shared_key)
            if shared is None:
                clients = RedisClients(
                    location, {k: v for k, v in options.items() if k in REDIS_OPTIONS})
                policy = policy_from_options(
                    options, name=params.get("KEY_PREFIX", "") or str(location))
                shared = _redis_shared[shared_key] = (clients, policy)
        clients, policy = shared
        l1 = option_bool(options, "L1", True)
        l1_timeout = option_number(options, "L1_TIMEOUT", 300.0, allow_none=True)
        l1_max_item = option_int(options, "L1_MAX_ITEM_BYTES", _REDIS_ONLY["L1_MAX_ITEM_BYTES"],
                                 minimum=0)
        # clear() deletes this cache's keys only (RedisTier.namespace()).
        return RedisTier(
            self._engine, clients, policy,
            lock_timeout=option_number(options, "GET_OR_SET_LOCK_TIMEOUT", 10.0),
            lock_wait=self._get_or_set_wait, store=self._store if l1 else None,
            l1_timeout=l1_timeout, l1_max_item_bytes=l1_max_item,
        )

    @staticmethod
    def _shared_store(location: str, options: dict) -> tuple[_core.Store, _Flights]:
        bounds = {
            "max_bytes": option_int(options, "MAX_BYTES", _DEFAULTS["MAX_BYTES"], minimum=1),
            "max_entries": option_int(options, "MAX_ENTRIES", _DEFAULTS["MAX_ENTRIES"], minimum=1),
            "cull_frequency": option_int(options, "CULL_FREQUENCY", _DEFAULTS["CULL_FREQUENCY"],
                                         minimum=0),
            "shards": option_int(options, "SHARDS", _DEFAULTS["SHARDS"], minimum=1),
        }
        # Aliases sharing a LOCATION share its store when they agree on its bounds; an
        # alias with other bounds (Django's own test suite has such "cull" aliases) gets
        # a store of its own, so each alias's MAX_ENTRIES means what it says.
        name = (location, *bounds.values())
        with _stores_lock:
            shared = _stores.get(name)
            if shared is None:
                shared = _stores[name] = (_core.Store(**bounds), _Flights())
            return shared

    # --- attributes Django sets (and its tests change) are mirrored into the engine

    @property
    def key_prefix(self) -> str:
        return self._key_prefix

    @key_prefix.setter
    def key_prefix(self, value: str) -> None:
        self._key_prefix = value
        self._engine.set_prefix(value)
        self._follow_keys()

    @property
    def version(self) -> int:
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version = value
        self._engine.set_version(value)

    @property
    def key_func(self):
        return self._key_func

    @key_func.setter
    def key_func(self, func) -> None:
        self._key_func = func
        self._engine.set_key_func(None if func is default_key_func else func)
        self._follow_keys()

    def _follow_keys(self) -> None:
        # The coherent L1 must be told which keys to track whenever either changes.
        if self._tier is not None and hasattr(self, "_key_prefix") and hasattr(self, "_key_func"):
            self._tier.follow_keys(self._key_prefix, self._key_func is not default_key_func)

    @property
    def default_timeout(self) -> float | None:
        return self._default_timeout

    @default_timeout.setter
    def default_timeout(self, value: float | None) -> None:
        self._default_timeout = value
        self._engine.set_default_timeout(value)

    # --- keys

    def make_key(self, key, version=None) -> str:
        return self._engine.make_key(key, version)

    def validate_key(self, key) -> None:
        self._engine.validate_key(key)

    def make_and_validate_key(self, key, version=None) -> str:
        key = self._engine.make_key(key, version)
        self._engine.validate_key(key)
        return key

    # --- Django's cache API

    def get(self, key, default=None, version=None):
        value = self._get(key, default, version)
        # A tagged entry (see tags.py) is a 4-tuple envelope; checking the type first keeps
        # the cost on untagged hits to one comparison.
        if type(value) is tuple and len(value) == 4 and value[0] == _ENVELOPE:
            return _tags.resolve(self, key, value, default, version)
        return value

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None, tags=None, nx=False,
            xx=False) -> bool:
        """Django's set; also django-redis's ``nx`` (only if missing: ``add``) and ``xx``
        (only if present). True if stored (as django-redis), False if not, or if Redis
        was unreachable and IGNORE_EXCEPTIONS dropped the write."""
        if tags is not None:
            value = _tags.envelope(self, tags, value)
            if value is None:  # tag counters unreachable: an entry we could not invalidate
                self._cache.delete(key, version)
                return False
        if nx:
            return self._cache.add(key, value, timeout, version)
        if xx:
            return self._set_xx(key, value, timeout, version)
        if self._tier is not None:
            return self._cache.set(key, value, timeout, version)
        if timeout is not DEFAULT_TIMEOUT and timeout is not None and timeout <= 0:
            # As on Redis (and django-redis): the key is deleted; True if there was one.
            had = self._engine.has_key(key, version)
            self._engine.set(key, value, timeout, version)
            return had
        self._engine.set(key, value, timeout, version)
        return True

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None, tags=None) -> bool:
        if tags is not None:
            value = _tags.envelope(self, tags, value)
            if value is None:
                return False
        return self._cache.add(key, value, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None) -> bool:
        return self._cache.touch(key, timeout, version)

    def delete(self, key, version=None) -> bool:
        return self._cache.delete(key, version)

    def has_key(self, key, version=None) -> bool:
        return self._cache.has_key(key, version)

    def get_many(self, keys, version=None) -> dict:
        return _tags.resolve_many(self, self._cache.get_many(keys, version), version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None, tags=None) -> list:
        data = dict(data)
        if tags is not None:
            gens = _tags.generations(self, _tags.normalize(tags), create=True)
            if gens is None:
                self._cache.delete_many(list(data), version)
                return list(data)
            data = {k: _tags.envelope(self, tags, v, gens) for k, v in data.items()}
        return self._cache.set_many(data, timeout, version)

    def delete_many(self, keys, version=None) -> int | None:
        """Django's delete_many; returns how many keys existed (as django-redis does), or
        None for no keys at all (Django's own test suite requires None there)."""
        keys = list(keys)
        if not keys:
            return None
        if self._tier is not None:
            return self._tier.delete_many(keys, version) or 0
        found = sum(1 for k in keys if self._engine.has_key(k, version))
        self._engine.delete_many(keys, version)
        return found

    def incr(self, key, delta=1, version=None, ignore_key_check=False):
        """Django's incr; ``ignore_key_check=True`` (django-redis) starts a missing key at
        0, stored without expiry, instead of raising ValueError."""
        try:
            return self._cache.incr(key, delta, version)
        except ValueError:
            if not ignore_key_check:
                raise
        self.add(key, 0, None, version)  # NX: a concurrent creator's value stands
        return self._cache.incr(key, delta, version)

    def decr(self, key, delta=1, version=None):
        return self._cache.incr(key, -delta, version)

    def get_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        if self._tier is not None:
            return self._tier.get_or_set(self, key, default, timeout, version)
        value = self.get(key, _MISSING, version=version)
        if value is not _MISSING:
            return value
        if not callable(default):
            self.add(key, default, timeout=timeout, version=version)
            return self.get(key, default, version=version)
        # One thread computes; the others wait for it and read its value.
        with self._flights.hold(self._engine.make_key(key, version), self._get_or_set_wait):
            value = self.get(key, _MISSING, version=version)
            if value is not _MISSING:
                return value
            default = default()
            self.add(key, default, timeout=timeout, version=version)
            return self.get(key, default, version=version)

    def clear(self) -> None:
        self._cache.clear()
        if self._tier is None:
            # The embedded default keeps its throttles' state beside its store (in Redis
            # they are keys under this cache's prefix, which the line above deleted).
            from . import limiter

            limiter.clear_embedded(self._location)
        else:
            # Denials the throttles remember (_denials.py) go now, not when the listener
            # hears of the deletes: a check right after clear() asks Redis.
            from . import _denials

            _denials.forget_all()

    def invalidate_tags(self, *tags: str) -> None:
        """Makes every entry stored with any of ``tags`` a miss: one atomic increment per
        tag, no scan (see tags.py)."""
        _tags.invalidate_tags(self, *tags)

    async def ainvalidate_tags(self, *tags: str) -> None:
        await _tags.ainvalidate_tags(self, *tags)

    def close(self, **kwargs) -> None:
        """Nothing to release: the L1 store lives as long as the process, and Redis
        connections stay pooled across requests (as with Django's RedisCache)."""

    @property
    def client(self) -> RedisClientAdapter:
        """django-redis's ``cache.client``: ``cache.client.get_client(write=True)`` is the
        redis-py client (single node, Sentinel or Cluster)."""
        return RedisClientAdapter(self)

    def _set_xx(self, key, value, timeout, version) -> bool:
        if self._tier is not None:
            return self._ds_set_xx(key, value, timeout, version)
        # The embedded default: one process, so check-then-set under the key's flight lock.
        with self._flights.hold(self._engine.make_key(key, version), None):
            if not self._engine.has_key(key, version):
                return False
            self._engine.set(key, value, timeout, version)
            return True

    def get_client(self, key=None, write: bool = True):
        """The redis-py client (django-redis's name), for commands this API lacks."""
        if self._tier is None:
            raise ImproperlyConfigured("get_client() needs a Redis LOCATION")
        return self._tier.clients.client(write=write)

    def redis_client(self):
        """The redis-py client for writes, or None on the embedded default."""
        return None if self._tier is None else self._tier.clients.client(write=True)

    def redis_async_client(self):
        """The ``redis.asyncio`` client of the running event loop for writes, or None on
        the embedded default."""
        return None if self._tier is None else self._tier.clients.async_client(write=True)

    @property
    def breaker(self):
        """The circuit breaker in front of Redis, or None on the embedded default."""
        return None if self._tier is None else self._tier.policy.breaker

    # --- async twins: the L1 never blocks, so on the embedded default they run inline,
    # without a thread hop; with Redis they use redis.asyncio clients.

    async def aget(self, key, default=None, version=None):
        if self._tier is not None:
            value = await self._tier.aget(key, default, version)
        else:
            value = self._get(key, default, version)
        if type(value) is tuple and len(value) == 4 and value[0] == _ENVELOPE:
            return await _tags.aresolve(self, key, value, default, version)
        return value

    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None, tags=None) -> None:
        if tags is not None:
            value = _tags.envelope(self, tags, value)
            if value is None:
                return await self.adelete(key, version)
        if self._tier is not None:
            return await self._tier.aset(key, value, timeout, version)
        self._engine.set(key, value, timeout, version)

    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None, tags=None) -> bool:
        if tags is not None:
            value = _tags.envelope(self, tags, value)
            if value is None:
                return False
        if self._tier is not None:
            return await self._tier.aadd(key, value, timeout, version)
        return self._engine.add(key, value, timeout, version)

    async def atouch(self, key, timeout=DEFAULT_TIMEOUT, version=None) -> bool:
        if self._tier is not None:
            return await self._tier.atouch(key, timeout, version)
        return self._engine.touch(key, timeout, version)

    async def adelete(self, key, version=None) -> bool:
        if self._tier is not None:
            return await self._tier.adelete(key, version)
        return self._engine.delete(key, version)

    async def ahas_key(self, key, version=None) -> bool:
        if self._tier is not None:
            return await self._tier.ahas_key(key, version)
        return self._engine.has_key(key, version)

    async def aget_many(self, keys, version=None) -> dict:
        if self._tier is not None:
            found = await self._tier.aget_many(keys, version)
        else:
            found = self._engine.get_many(keys, version)
        if any(type(v) is tuple for v in found.values()):
            found = _tags.resolve_many(self, found, version)
        return found

    async def aset_many(self, data, timeout=DEFAULT_TIMEOUT, version=None, tags=None) -> list:
        if tags is not None:
            gens = _tags.generations(self, _tags.normalize(tags), create=True)
            if gens is None:
                await self.adelete_many(list(data), version)
                return list(data)
            data = {k: _tags.envelope(self, tags, v, gens) for k, v in dict(data).items()}
        if self._tier is not None:
            return await self._tier.aset_many(dict(data), timeout, version)
        return self._engine.set_many(dict(data), timeout, version)

    async def adelete_many(self, keys, version=None) -> None:
        if self._tier is not None:
            return await self._tier.adelete_many(keys, version)
        self._engine.delete_many(keys, version)

    async def aincr(self, key, delta=1, version=None):
        if self._tier is not None:
            return await self._tier.aincr(key, delta, version)
        return self._engine.incr(key, delta, version)

    async def adecr(self, key, delta=1, version=None):
        return await self.aincr(key, -delta, version)

    async def aget_or_set(self, key, default, timeout=DEFAULT_TIMEOUT, version=None):
        # Within one event loop a synchronous default() cannot interleave with another
        # task, so no lock is taken (it would block the loop).
        value = await self.aget(key, _MISSING, version)
        if value is _MISSING:
            if callable(default):
                default = default()
            await self.aadd(key, default, timeout, version)
            value = await self.aget(key, default, version)
        return value

    async def aclear(self) -> None:
        if self._tier is not None:
            return await self._tier.aclear()
        self._engine.clear()
        from . import limiter

        limiter.clear_embedded(self._location)

    async def aclose(self, **kwargs) -> None:
        """Nothing to release (see close())."""

    # --- django-redis extras, with the same names and meanings

    def ttl(self, key, version=None) -> int | None:
        """Seconds left (rounded as Redis TTL does), None if it never expires, 0 if missing."""
        ms = self._cache.pttl(key, version)
        if ms == -2:
            return 0
        return None if ms == -1 else (ms + 500) // 1000

    def pttl(self, key, version=None) -> int | None:
        """Milliseconds left, None if it never expires, 0 if missing."""
        ms = self._cache.pttl(key, version)
        if ms == -2:
            return 0
        return None if ms == -1 else ms

    def expire(self, key, timeout, version=None) -> bool:
        """Sets a new timeout in seconds (None: never expire; DEFAULT_TIMEOUT: the cache's
        TIMEOUT). False if the key is missing."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        when = None if timeout is None else self._cache.now() + timeout
        return self._cache.expire_at(key, when, version)

    def pexpire(self, key, timeout, version=None) -> bool:
        """As :meth:`expire`, in milliseconds (DEFAULT_TIMEOUT: the cache's TIMEOUT)."""
        if timeout is DEFAULT_TIMEOUT:
            return self.expire(key, timeout, version)
        return self.expire(key, None if timeout is None else timeout / 1000.0, version)

    def expire_at(self, key, when: datetime | float, version=None) -> bool:
        """Expires the key at an absolute time (an aware/naive datetime or a Unix time)."""
        if isinstance(when, datetime):
            when = when.timestamp()
        return self._cache.expire_at(key, float(when), version)

    def pexpire_at(self, key, when: datetime | float, version=None) -> bool:
        return self.expire_at(key, when if isinstance(when, datetime) else when / 1000.0, version)

    def persist(self, key, version=None) -> bool:
        """Removes the key's timeout; True only if it had one (Redis PERSIST, as
        django-redis answers)."""
        if self._tier is not None:
            k = self._engine.key(key, version)
            return bool(self._ds_run("persist", "persist", k, write=True, default=0,
                                     changed=(k,)))
        return self._cache.pttl(key, version) >= 0 and self._cache.expire_at(key, None, version)

    def _pattern(self, search: str, version) -> str:
        prefix = _glob_escape(self.key_prefix)
        return self.key_func(search, prefix, self.version if version is None else version)

    def _user_key(self, final_key: str) -> str:
        if self._reverse_key is not None:
            return self._reverse_key(final_key)
        if self.key_func is not default_key_func:
            raise ImproperlyConfigured(
                "FastCache.keys()/iter_keys() with a custom KEY_FUNCTION need "
                "OPTIONS['REVERSE_KEY_FUNCTION'] to turn stored keys back into cache keys"
            )
        return final_key.split(":", 2)[2]

    def keys(self, search: str = "*", version=None) -> list[str]:
        """Cache keys (as passed to set) matching a Redis-style glob, in no order."""
        return [self._user_key(k) for k in self._cache.keys(self._pattern(search, version))]

    def iter_keys(self, search: str = "*", itersize: int | None = None, version=None):
        """A generator over ``keys(search)``; ``itersize`` is accepted for django-redis parity."""
        yield from self.keys(search, version=version)

    def delete_pattern(self, pattern: str, version=None, itersize: int | None = None) -> int:
        """Deletes every key matching a Redis-style glob; returns how many were deleted."""
        return self._cache.delete_matching(self._pattern(pattern, version))

    def lock(self, key, timeout: float | None = None, sleep: float = 0.1,
             blocking: bool = True, blocking_timeout: float | None = None,
             thread_local: bool = True, version=None) -> LocalLock:
        """A lock named by a cache key, with redis-py's Lock API: held in Redis (across
        processes and hosts) with a Redis LOCATION, within this process otherwise."""
        if self._tier is not None:
            from .redis_tier import RedisLock

            return self._tier.clients.client(write=True).lock(
                self._engine.key(key, version), timeout=timeout, sleep=sleep, blocking=blocking,
                blocking_timeout=blocking_timeout, thread_local=thread_local,
                lock_class=RedisLock)
        return LocalLock(self, key, timeout=timeout, sleep=sleep, blocking=blocking,
                         blocking_timeout=blocking_timeout, version=version)

    def stats(self) -> dict:
        """Counters of the L1 store behind this cache (shared by its LOCATION)."""
        s = self._store.stats()
        lookups = s["hits"] + s["misses"]
        s["hit_ratio"] = s["hits"] / lookups if lookups else 0.0
        s["location"] = self._location if isinstance(self._location, str) else list(self._location)
        if self._tier is None:
            s["tier"] = "l1"
            return s
        l1_on = self._tier.l1
        s = {f"l1_{k}": v for k, v in s.items() if k not in ("location",)} if l1_on else {}
        s.update(self._tier.stats())
        s["tier"] = "l1+redis" if l1_on else "redis"
        s["location"] = self._location if isinstance(self._location, str) else list(self._location)
        return s


def _is_redis(location, options: dict) -> bool:
    """A Redis LOCATION (URL, list of URLs) or Sentinel/Cluster options; anything else is
    the name of an in-process store, as LocMemCache takes it."""
    if options.get("SENTINELS") is not None or options.get("CLUSTER"):
        return True
    if isinstance(location, (list, tuple)):
        return True
    return isinstance(location, str) and "://" in location


def _redis_options() -> set[str]:
    from .redis_client import REDIS_OPTIONS

    return set(REDIS_OPTIONS)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class LocalLock:
    """A lock held in the L1 store under a cache key; redis-py's ``Lock`` API.

    ``timeout`` bounds how long the lock may be held (it expires by itself after that);
    ``blocking_timeout`` bounds how long ``acquire`` waits. It excludes other threads of
    this process only: the embedded default is not shared between processes.
    """

    _release_lock = threading.Lock()

    def __init__(self, cache: FastCache, name, *, timeout=None, sleep=0.1, blocking=True,
                 blocking_timeout=None, version=None) -> None:
        if sleep <= 0:
            raise ValueError("sleep must be positive")
        self.cache, self.name, self.timeout, self.sleep = cache, name, timeout, sleep
        self.blocking, self.blocking_timeout, self.version = blocking, blocking_timeout, version
        self.token: str | None = None

    def acquire(self, blocking: bool | None = None, blocking_timeout: float | None = None,
                token: str | None = None) -> bool:
        blocking = self.blocking if blocking is None else blocking
        wait = self.blocking_timeout if blocking_timeout is None else blocking_timeout
        token = token or uuid.uuid4().hex
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            if self.cache.add(self.name, token, timeout=self.timeout, version=self.version):
                self.token = token
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(self.sleep)

    def locked(self) -> bool:
        return self.cache.has_key(self.name, version=self.version)

    def owned(self) -> bool:
        if self.token is None:
            return False
        return self.cache.get(self.name, version=self.version) == self.token

    def release(self) -> None:
        with self._release_lock:
            if not self.owned():
                self.token = None
                raise LockNotOwnedError(f"cannot release lock {self.name!r}: not owned")
            self.cache.delete(self.name, version=self.version)
            self.token = None

    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        with self._release_lock:
            if not self.owned():
                raise LockNotOwnedError(f"cannot extend lock {self.name!r}: not owned")
            left = self.cache.pttl(self.name, version=self.version)
            base = 0.0 if replace_ttl or left is None else left / 1000.0
            return self.cache.expire(self.name, base + additional_time, version=self.version)

    def __enter__(self) -> LocalLock:
        if self.acquire():
            return self
        raise LockError(f"could not acquire lock {self.name!r}")

    def __exit__(self, *exc) -> None:
        self.release()

