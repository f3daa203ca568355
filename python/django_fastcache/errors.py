"""The one error hierarchy of django-fastcache.

Every error the package raises on purpose derives from :class:`FastCacheError`; where one
resembles a builtin it also derives from that builtin, so ``except ValueError`` keeps
working for callers who do not know this package.
"""

__all__ = [
    "FastCacheError",
    "DecodeError",
    "SignatureError",
    "UnknownFormatError",
    "SerializationError",
    "ValueTooLargeError",
    "LockError",
    "LockNotOwnedError",
    "ConnectionInterrupted",
    "ConnectionTimeout",
    "CrossSlotError",
    "InvalidRate",
    "interrupted",
]


class FastCacheError(Exception):
    """Base class of every django-fastcache error."""


class DecodeError(FastCacheError, ValueError):
    """Bytes that are not a valid django-fastcache value (corrupt, truncated, foreign)."""


class SignatureError(DecodeError):
    """A pickled value whose HMAC signature is missing or does not verify; never unpickled."""


class UnknownFormatError(DecodeError):
    """A value written in a wire-format version this build does not know."""


class SerializationError(FastCacheError, TypeError):
    """A value that cannot be stored under the configured serializer or pickle policy."""


class ValueTooLargeError(FastCacheError, ValueError):
    """A value whose encoded body is over the cache's ``MAX_VALUE_BYTES``: not stored (a
    reader would refuse it as a possible decompression bomb)."""


class LockError(FastCacheError):
    """A cache lock could not be acquired (raised by ``with cache.lock(...)``)."""


class LockNotOwnedError(LockError):
    """Releasing or extending a lock this holder does not own (any more)."""


class ConnectionInterrupted(FastCacheError, ConnectionError):
    """Redis could not be reached (refused, timed out, down, read-only, loading) or the
    circuit breaker is open; raised only with ``IGNORE_EXCEPTIONS=False``, chained from the
    redis-py or socket error when there was one."""


class ConnectionTimeout(ConnectionInterrupted, TimeoutError):
    """The timeout twin of :class:`ConnectionInterrupted`: Redis did not answer (or accept
    the connection) within ``SOCKET_TIMEOUT`` / ``SOCKET_CONNECT_TIMEOUT``."""


class CrossSlotError(FastCacheError, ValueError):
    """A multi-key command on Redis Cluster whose keys live in different hash slots; put a
    hash tag (``{user42}``) in each key so that they share one slot."""


# What the failure policy actually raises are the redis-flavoured subclasses below, which
# also derive from redis-py's ``ConnectionError`` / ``TimeoutError``, so code written to
# catch redis-py's errors (as with django-redis) catches ours. They are built on first use
# (module ``__getattr__``), because importing redis-py costs ~100 ms and the embedded
# default does not need it: this module, and the package, import without redis installed.
# (Not in ``__all__`` for that reason: ``from errors import *`` must not import redis-py.)
_REDIS_FLAVOURED = {
    "RedisConnectionInterrupted": (ConnectionInterrupted, "ConnectionError"),
    "RedisConnectionTimeout": (ConnectionTimeout, "TimeoutError"),
}


def __getattr__(name: str):
    if name not in _REDIS_FLAVOURED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from redis import exceptions

    ours, theirs_name = _REDIS_FLAVOURED[name]
    theirs = getattr(exceptions, theirs_name)

    def __init__(self, *args) -> None:
        ours.__init__(self, *args)  # OSError's, which does not chain to redis-py's
        theirs.__init__(self, *args)  # redis-py's attributes (error_type, status_code)

    cls = type(name, (ours, theirs), {
        "__module__": __name__, "__qualname__": name, "__init__": __init__,
        "__repr__": BaseException.__repr__, "__str__": BaseException.__str__,
        "__doc__": f"{ours.__name__} that is also a redis.exceptions.{theirs_name}.",
    })
    globals()[name] = cls  # later lookups (and pickle) find it without __getattr__
    return cls


def interrupted(message: str, cause: BaseException | None = None) -> ConnectionInterrupted:
    """The error to raise for a Redis call that failed with ``cause`` (None: refused by the
    circuit breaker): a :class:`ConnectionTimeout` for a timeout, else a
    :class:`ConnectionInterrupted`; redis-flavoured whenever redis-py is installed."""
    import asyncio

    try:
        from redis import exceptions
    except ImportError:  # plain socket errors, without redis-py
        exceptions = None
    timeouts: tuple = (TimeoutError, asyncio.TimeoutError)
    if exceptions is not None:
        timeouts += (exceptions.TimeoutError,)
    timeout = cause is not None and isinstance(cause, timeouts)
    if exceptions is None:
        return (ConnectionTimeout if timeout else ConnectionInterrupted)(message)
    name = "RedisConnectionTimeout" if timeout else "RedisConnectionInterrupted"
    return (globals().get(name) or __getattr__(name))(message)


class InvalidRate(FastCacheError, ValueError):
    """A rate string the limiter cannot parse ("100/minute", "100/15m", ... are valid)."""
