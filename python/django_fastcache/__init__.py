"""django-fastcache: a Django cache backend, DRF throttles and a JSON log formatter with a
C++ core.

Public entry points live in their own modules, named after the Django/DRF module they
extend: ``django_fastcache.cache``, ``django_fastcache.throttling``, ``django_fastcache.log``.
This package imports neither Django nor DRF, so importing it is cheap and safe anywhere.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ConnectionInterrupted,
    ConnectionTimeout,
    DecodeError,
    FastCacheError,
    SerializationError,
    SignatureError,
    UnknownFormatError,
)

try:
    __version__ = version("django-fastcache")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"



def get_redis_connection(alias: str = "default", write: bool = True):
    """The redis-py client behind ``caches[alias]`` (django-redis's helper of the same
    name): ``write=True`` for the primary. Imports Django only when called."""
    from .compat import get_redis_connection as get

    return get(alias, write)


__all__ = [
    "ConnectionInterrupted",
    "ConnectionTimeout",
    "DecodeError",
    "FastCacheError",
    "SerializationError",
    "SignatureError",
    "UnknownFormatError",
    "__version__",
    "get_redis_connection",
]
