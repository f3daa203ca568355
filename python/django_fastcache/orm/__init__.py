"""ORM queryset caching with automatic granular invalidation: a drop-in for django-cacheops.

Replace ``"cacheops"`` by ``"django_fastcache.orm"`` in ``INSTALLED_APPS`` and
``from cacheops import ...`` by ``from django_fastcache.orm import ...``; the ``CACHEOPS``
settings keep their meaning. Entries live in the FastCache named by
``FASTCACHE_ORM_CACHE`` (default ``"default"``). See docs/orm.md.

Names are imported on first use, so that importing this package (as decorators.py does
for its transaction helpers) pulls in no ORM machinery.
"""

from importlib import import_module

__all__ = [
    "cache_invalidated",
    "cache_read",
    "cached",
    "cached_as",
    "cached_view",
    "cached_view_as",
    "invalidate_all",
    "invalidate_dict",
    "invalidate_model",
    "invalidate_obj",
    "no_invalidation",
]

_WHERE = {
    "cache_invalidated": "signals", "cache_read": "signals",
    "cached": "simple", "cached_as": "simple", "cached_view": "simple",
    "cached_view_as": "simple",
    "invalidate_all": "invalidation", "invalidate_dict": "invalidation",
    "invalidate_model": "invalidation", "invalidate_obj": "invalidation",
    "no_invalidation": "invalidation",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__():
    return sorted(__all__)
