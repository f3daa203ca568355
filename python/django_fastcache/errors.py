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
    "InvalidRate",
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


class InvalidRate(FastCacheError, ValueError):
    """A rate string the limiter cannot parse ("100/minute", "100/15m", ... are valid)."""
