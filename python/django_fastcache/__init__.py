"""django-fastcache: a Django cache backend, DRF throttles and a JSON log formatter with a
C++ core.

Public entry points live in their own modules, named after the Django/DRF module they
extend: ``django_fastcache.cache``, ``django_fastcache.throttling``, ``django_fastcache.log``.
This package imports neither Django nor DRF, so importing it is cheap and safe anywhere.
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ConnectionInterrupted,
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

__all__ = [
    "ConnectionInterrupted",
    "DecodeError",
    "FastCacheError",
    "SerializationError",
    "SignatureError",
    "UnknownFormatError",
    "__version__",
]
