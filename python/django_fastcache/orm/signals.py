"""The signals django-cacheops sends, under the same names and arguments."""

import django.dispatch

__all__ = ["cache_invalidated", "cache_read"]

# sender: the model (None for cached_as/cached functions); func: the function or None;
# hit: whether the value came from the cache.
cache_read = django.dispatch.Signal()
# sender: the model (None for invalidate_all); obj_dict: the row's values or None.
cache_invalidated = django.dispatch.Signal()
