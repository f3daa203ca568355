"""Coming from django-redis: its OPTIONS and ``DJANGO_REDIS_*`` settings translated to
FastCache's, its ``get_redis_connection`` and the ``cache.client`` object third-party code
reaches for.

:func:`translate_options` runs when a ``FastCache`` is built: a django-redis option with a
direct equivalent becomes ours (and the ``fastcache.I301`` system check says which one to
write instead), one without is refused with an ``ImproperlyConfigured`` that names what
to use. See docs/cache.md, "Migrating from django-redis".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

__all__ = ["RedisClientAdapter", "get_redis_connection", "translate_options"]

#: django-redis SERIALIZER paths -> our SERIALIZER names.
SERIALIZERS = {
    "django_redis.serializers.pickle.PickleSerializer": "pickle",
    "django_redis.serializers.json.JSONSerializer": "json",
    "django_redis.serializers.msgpack.MSGPackSerializer": "msgpack",
}
#: django-redis COMPRESSOR paths -> our COMPRESSOR names.
COMPRESSORS = {
    "django_redis.compressors.identity.IdentityCompressor": "none",
    "django_redis.compressors.zlib.ZlibCompressor": "zlib",
    "django_redis.compressors.zstd.ZStdCompressor": "zstd",
    "django_redis.compressors.lz4.Lz4Compressor": "lz4",
}
_CLIENTS_ACCEPTED = ("django_redis.client.DefaultClient",
                     "django_redis.client.default.DefaultClient")
_CLIENTS_REFUSED = {
    "django_redis.client.ShardClient": (
        "FastCache does no client-side sharding: use Redis Cluster (LOCATION "
        "'redis+cluster://host:port' or OPTIONS['CLUSTER'] = True) and drop CLIENT_CLASS"),
    "django_redis.client.HerdClient": (
        "FastCache's get_or_set() already protects against stampedes (a lease in Redis, "
        "OPTIONS['GET_OR_SET_LOCK_TIMEOUT']): drop CLIENT_CLASS"),
    "django_redis.client.SentinelClient": (
        "give FastCache OPTIONS['SENTINELS'] = [(host, port), ...] and "
        "OPTIONS['SENTINEL_SERVICE'] = '<service>' with LOCATION 'redis:///<db>', and drop "
        "CLIENT_CLASS"),
}
# CONNECTION_POOL_KWARGS entries that are options of their own here.
_POOL_KWARGS = {
    "max_connections": "MAX_CONNECTIONS",
    "socket_timeout": "SOCKET_TIMEOUT",
    "socket_connect_timeout": "SOCKET_CONNECT_TIMEOUT",
    "health_check_interval": "HEALTH_CHECK_INTERVAL",
    "retry_on_timeout": "RETRY_ON_TIMEOUT",
}
_PARSERS_ACCEPTED = (
    "redis.connection.HiredisParser", "redis.connection._HiredisParser",
    "redis._parsers.HiredisParser", "redis._parsers._HiredisParser",
    "redis.connection.PythonParser", "redis._parsers.PythonParser",
    "redis.connection._RESP2Parser", "redis._parsers._RESP2Parser",
)


def _refuse(name: str, value: Any, instead: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"FastCache does not take django-redis's {name} = {value!r}: "
                                f"{instead}")


def translate_options(options: Mapping[str, Any], settings: Any = None, *, redis: bool = True,
                      ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``options`` (a CACHES entry's OPTIONS) with django-redis's options and settings
    replaced by FastCache's; also the list of ``(theirs, ours)`` translations made, for
    the system check. ``settings``: Django's (read here, never at import time).
    ``redis=False`` (the embedded default): the global ``DJANGO_REDIS_*`` settings, which
    only concern Redis, are left alone."""
    if settings is None:
        from django.conf import settings
    out = dict(options)
    notes: list[tuple[str, str]] = []

    def note(theirs: str, ours: str) -> None:
        notes.append((theirs, ours))

    client = out.pop("CLIENT_CLASS", None)
    if client is not None:
        if client in _CLIENTS_ACCEPTED:
            note(f"OPTIONS['CLIENT_CLASS'] = {client!r}", "nothing (remove it: the client is "
                 "built in, for a single node, Sentinel or Cluster)")
        else:
            raise _refuse("OPTIONS['CLIENT_CLASS']", client, _CLIENTS_REFUSED.get(
                client, "FastCache has one built-in client; remove CLIENT_CLASS"))

    for name, table, what in (("SERIALIZER", SERIALIZERS, "serializer"),
                              ("COMPRESSOR", COMPRESSORS, "compressor")):
        value = out.get(name)
        if isinstance(value, str) and "." in value:
            if value not in table:
                raise _refuse(f"OPTIONS[{name!r}]", value,
                              f"set OPTIONS[{name!r}] to one of FastCache's {what}s: "
                              + ", ".join(repr(v) for v in sorted(set(table.values()))))
            out[name] = table[value]
            note(f"OPTIONS[{name!r}] = {value!r}", f"OPTIONS[{name!r}] = {table[value]!r}")

    for name in ("CONNECTION_POOL_KWARGS", "REDIS_CLIENT_KWARGS"):
        pool = out.pop(name, None)
        if pool is None:
            continue
        if not isinstance(pool, Mapping):
            raise _refuse(f"OPTIONS[{name!r}]", pool, "it must be a dict")
        pool = dict(pool)
        for kwarg, ours in _POOL_KWARGS.items():
            if kwarg in pool:
                out[ours] = pool.pop(kwarg)
                note(f"OPTIONS[{name!r}][{kwarg!r}]", f"OPTIONS[{ours!r}]")
        if pool:
            kwargs = dict(out.get("CONNECTION_KWARGS") or {})
            kwargs.update(pool)
            out["CONNECTION_KWARGS"] = kwargs
            note(f"OPTIONS[{name!r}]", "OPTIONS['CONNECTION_KWARGS']")

    for name, defaults in (("CONNECTION_POOL_CLASS", ("redis.connection.ConnectionPool",
                                                      "redis.ConnectionPool")),
                           ("REDIS_CLIENT_CLASS", ("redis.client.Redis", "redis.Redis")),
                           ("CONNECTION_FACTORY", ("django_redis.pool.ConnectionFactory",))):
        value = out.pop(name, None)
        if value is None:
            continue
        if value not in defaults:
            raise _refuse(f"OPTIONS[{name!r}]", value, "FastCache builds its redis-py clients "
                          "and pools itself (single node, Sentinel, Cluster); pass keyword "
                          "arguments through OPTIONS['CONNECTION_KWARGS'] and remove it")
        note(f"OPTIONS[{name!r}] = {value!r}", "nothing (remove it: redis-py's default)")
    factory = getattr(settings, "DJANGO_REDIS_CONNECTION_FACTORY", None) if redis else None
    if factory is not None and factory != "django_redis.pool.ConnectionFactory" \
            and not _django_redis_in_use(settings):
        raise _refuse("settings.DJANGO_REDIS_CONNECTION_FACTORY", factory, "FastCache builds "
                      "its redis-py clients itself; pass keyword arguments through "
                      "OPTIONS['CONNECTION_KWARGS']")

    replica = out.pop("REPLICA_READ_ONLY", None)
    if replica is True:
        note("OPTIONS['REPLICA_READ_ONLY'] = True", "nothing (writes always go to the primary)")
    elif replica is not None:
        raise _refuse("OPTIONS['REPLICA_READ_ONLY']", replica, "FastCache never writes to a "
                      "replica; remove it")

    if "PASSWORD" in out:
        raise _refuse("OPTIONS['PASSWORD']", "***", "put the password in LOCATION "
                      "('redis://:password@host:6379/0' or 'redis://user:password@...')")
    if "USERNAME" in out:
        raise _refuse("OPTIONS['USERNAME']", out["USERNAME"], "put the user name in LOCATION "
                      "('redis://user:password@host:6379/0')")

    parser = out.pop("PARSER_CLASS", None)
    if parser is not None:
        if parser not in _PARSERS_ACCEPTED:
            raise _refuse("OPTIONS['PARSER_CLASS']", parser, "redis-py picks its parser "
                          "(hiredis when installed: pip install django-fastcache[redis]); "
                          "remove PARSER_CLASS")
        note(f"OPTIONS['PARSER_CLASS'] = {parser!r}",
             "nothing (remove it: hiredis is used whenever it is installed)")

    if not redis:
        settings = _NO_SETTINGS
    for name, where in (("LOG_IGNORED_EXCEPTIONS", "OPTIONS['LOG_IGNORED_EXCEPTIONS']"),
                        ("DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS",
                         "settings.DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS")):
        value = _take(out, settings, name)
        if value is None:
            continue
        if value is True:
            note(where, "nothing (FastCache always logs ignored Redis errors, at most one "
                 "line per OPTIONS['ERROR_LOG_INTERVAL'] seconds, to 'django_fastcache.redis')")
        elif value is False:
            out.setdefault("ERROR_LOG_INTERVAL", 3600.0)
            note(where + " = False", "OPTIONS['ERROR_LOG_INTERVAL'] (seconds between log "
                 "lines about ignored Redis errors; 3600 here)")
        else:
            raise _refuse(where, value, "it must be True or False")

    for name, where in (("CLOSE_CONNECTION", "OPTIONS['CLOSE_CONNECTION']"),
                        ("DJANGO_REDIS_CLOSE_CONNECTION",
                         "settings.DJANGO_REDIS_CLOSE_CONNECTION")):
        value = _take(out, settings, name)
        if value is None:
            continue
        if value is False:
            note(where + " = False", "nothing (connections stay pooled across requests)")
        else:
            raise _refuse(where, value, "FastCache keeps Redis connections pooled across "
                          "requests (close() is a no-op); remove it")

    ignore = getattr(settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", None)
    if ignore is not None and "IGNORE_EXCEPTIONS" not in out:
        out["IGNORE_EXCEPTIONS"] = ignore
        note("settings.DJANGO_REDIS_IGNORE_EXCEPTIONS", "OPTIONS['IGNORE_EXCEPTIONS'] "
             "(FastCache's default is True: a Redis outage is served as misses)")
    if getattr(settings, "DJANGO_REDIS_SCAN_ITERSIZE", None) is not None:
        note("settings.DJANGO_REDIS_SCAN_ITERSIZE",
             "nothing (keys()/iter_keys()/delete_pattern() scan in batches of 500)")
    logger = getattr(settings, "DJANGO_REDIS_LOGGER", None)
    if (logger is not None and logger != "django_fastcache.redis"
            and not _django_redis_in_use(settings)):
        raise _refuse("settings.DJANGO_REDIS_LOGGER", logger, "FastCache logs to the "
                      "'django_fastcache.redis' logger; configure that one in LOGGING")
    return out, notes


class _NoSettings:
    CACHES: dict = {}


_NO_SETTINGS = _NoSettings()


def _take(options: dict, settings: Any, name: str) -> Any:
    """An OPTIONS entry (removed from ``options``), or a ``DJANGO_REDIS_*`` setting."""
    if name.startswith("DJANGO_REDIS_"):
        return getattr(settings, name, None)
    return options.pop(name, None)


def _django_redis_in_use(settings: Any) -> bool:
    """Whether another CACHES entry still uses django-redis (whose settings those are)."""
    return any(str(conf.get("BACKEND", "")).startswith("django_redis.")
               for conf in getattr(settings, "CACHES", {}).values())


class RedisClientAdapter:
    """``cache.client``, with the methods of django-redis's ``DefaultClient`` that
    third-party code calls: ``get_client(write=True)`` returns the redis-py client
    (``redis.Redis``, the Sentinel primary or replica client, ``redis.cluster.RedisCluster``),
    ``make_key``, ``encode``/``decode`` (this cache's codec) and ``reverse_key``."""

    def __init__(self, cache) -> None:
        self._backend = cache

    def get_client(self, write: bool = True, tried: list[int] | None = None):
        tier = self._backend._tier
        if tier is None:
            raise ImproperlyConfigured(
                "cache.client.get_client() needs a FastCache with a Redis LOCATION; the "
                "embedded default has no Redis client")
        return tier.clients.client(write=write)

    def get_client_with_index(self, write: bool = True, tried: list[int] | None = None):
        return self.get_client(write=write), 0

    def make_key(self, key, version=None, prefix=None) -> str:
        if prefix is None:
            return self._backend.make_key(key, version)
        version = self._backend.version if version is None else version
        return self._backend.key_func(key, prefix, version)

    def encode(self, value) -> bytes:
        return self._backend._engine.dumps(value)

    def decode(self, value):
        if not isinstance(value, bytes):  # an int as a redis-py reply may hold it
            value = str(value).encode()
        return self._backend._engine.loads(value)

    def reverse_key(self, key: str) -> str:
        return self._backend._user_key(key)


def get_redis_connection(alias: str = "default", write: bool = True):
    """The redis-py client of ``caches[alias]`` (django-redis's helper of the same name):
    the primary for ``write=True``, a replica (when configured) otherwise."""
    from django.core.cache import caches

    cache = caches[alias]
    client = getattr(cache, "client", None)
    # NotImplementedError, as django-redis raises for a backend without Redis, so callers
    # that fall back on it keep working (the embedded FastCache has no Redis client).
    if client is None or not hasattr(client, "get_client") or getattr(cache, "_tier", 1) is None:
        raise NotImplementedError(
            f"caches[{alias!r}] ({type(caches[alias]).__name__}) has no Redis client")
    return client.get_client(write)
