"""cacheops' function decorators on our one implementation (decorators.cached):
``cached`` and ``cached_view`` (time-based, ``.invalidate(*args)``, ``.key(*args)``),
``cached_as`` and ``cached_view_as`` (invalidated by writes to the rows their sample
querysets read, as those querysets' own entries are)."""

from __future__ import annotations

import functools
import threading

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.db.models import Model, QuerySet

from .. import tags as _tags
from ..decorators import _Cached, stable_key
from . import conf
from .invalidation import get_cache
from .signals import cache_read
from .transaction import any_dirty, dirty_tables
from .tree import dependencies

__all__ = ["cached", "cached_as", "cached_view", "cached_view_as"]

_current = threading.local()  # the request a cached view is rendering, per thread
# Every cached/cached_as entry carries it; invalidate_all() moves it.
ALL_TAG = "orm:all"


def _queryset(sample) -> QuerySet:
    if isinstance(sample, QuerySet):
        return sample
    if isinstance(sample, Model):
        return type(sample)._default_manager.filter(pk=sample.pk)
    if isinstance(sample, type) and issubclass(sample, Model):
        return sample._default_manager.all()
    raise TypeError(f"cached_as(): a sample must be a queryset, a model or a model instance, "
                    f"not {type(sample).__name__}")


class _OrmCached(_Cached):
    """A ``decorators.cached`` function keyed also on ``extra`` (a value, or a callable
    of the arguments) and the sample querysets, tagged with their dependencies."""

    def __init__(self, func, timeout, extra, samples, lock) -> None:
        super().__init__(func, DEFAULT_TIMEOUT if timeout is None else timeout, None,
                         (ALL_TAG,), "default", None)
        self.extra = extra
        self.lock = lock
        self._samples = samples
        self._deps: dict | None = None
        self._sample_keys = ""
        self._tags_all: tuple | None = None

    def _cache(self):
        return get_cache()

    def _prepare(self):
        if self._tags_all is None:
            from .query import key_and_compiler, prepare

            deps: dict = {}
            keys = []
            for qs in self._samples:
                key, compiler = key_and_compiler(qs, "as", compile_sql=True)
                keys.append(key)
                for table, dnf in dependencies(qs.query, compiler).items():
                    deps[table] = list(dict.fromkeys([*deps.get(table, []), *dnf]))
            self._deps = deps
            self._sample_keys = stable_key(keys)
            tags, _ = prepare(get_cache(), deps) if deps else ((), None)
            self._tags_all = _tags.normalize([*self._fixed_tags, *tags])
        return self._tags_all

    def key_and_tags(self, args, kwargs):
        key, _, _ = super().key_and_tags(args, kwargs)
        tags = self._prepare()
        extra = self.extra(*args, **kwargs) if callable(self.extra) else self.extra
        if extra is not None or self._sample_keys:
            try:
                extra_key = stable_key(extra, self._sample_keys)
            except TypeError:
                extra_key = stable_key(repr(extra), self._sample_keys)
            key = f"{key}:{extra_key}"
        return key, tags, None

    def key(self, *args, **kwargs) -> str:
        """The cache key of the call with these arguments (``cache.get(f.key(...))``)."""
        return self.key_and_tags(args, kwargs)[0]

    def __call__(self, *args, **kwargs):
        if not conf.enabled():
            return self.func(*args, **kwargs)
        key, tags, _ = self.key_and_tags(args, kwargs)
        if self._deps:
            dirty = set().union(*(dirty_tables(a) for a in _aliases()))
            if dirty.intersection(self._deps):
                return self.func(*args, **kwargs)
        elif any_dirty():
            return self.func(*args, **kwargs)
        cache = self._cache()
        value, gens = _tags.get_tagged(cache, key, tags, self.version)
        if value is not _tags.MISS and cache._tier is not None:
            from .query import ask_redis, strict_counters

            if ask_redis(cache._tier):
                fresh = strict_counters(cache, tags)
                if fresh != gens:
                    value, gens = _tags.MISS, (None if None in fresh else fresh)
        cache_read.send(sender=None, func=self.func, hit=value is not _tags.MISS)
        if value is not _tags.MISS:
            return value
        if self._deps:
            # Registered again on each miss: the registry may have been evicted.
            from .query import prepare

            _, gens = prepare(cache, self._deps)
            gens = _tags.generations(cache, tags, create=True)
        elif gens is None:  # a counter never created yet (the first call after a flush)
            gens = _tags.generations(cache, tags, create=True)
        if self.lock and gens is not None:
            from .transaction import in_atomic

            if not in_atomic():
                got = cache.get_or_set(key, lambda: (_tags.ENVELOPE, tags, gens,
                                                     self.func(*args, **kwargs)), self.timeout)
                return got[3] if _tags.is_envelope(got) else got
        value = self.func(*args, **kwargs)
        self._store(cache, key, value, tags, gens)
        return value


def _aliases():
    from django.db import connections

    return [c.alias for c in connections.all(initialized_only=True) if c.in_atomic_block]


def cached(timeout=None, extra=None, lock=False):
    """cacheops' ``@cached(timeout=None, extra=None)``: results kept for ``timeout``
    seconds (default: the cache's), keyed on the function, its arguments and ``extra``;
    ``f.invalidate(*args)`` drops one, ``f.key(*args)`` names it."""
    def decorator(func):
        return _OrmCached(func, timeout, extra, (), lock)

    return decorator


def cached_as(*samples, timeout=None, extra=None, lock=None, keep_fresh=False):
    """Caches a function's results until a write touches the rows any of ``samples``
    (querysets, models, instances) reads. ``timeout``: default the smallest of the
    samples' profile timeouts. ``keep_fresh`` is accepted and always in effect: a value
    computed while an invalidation happened is stored stale (the counters are read
    before the call), so it is never served."""
    if not samples:
        raise TypeError("cached_as() needs at least one sample queryset, model or instance")
    querysets = [_queryset(s) for s in samples]
    from .query import _profile

    profiles = [_profile(qs.model) for qs in querysets]
    if timeout is None:
        timeouts = [p["timeout"] for p in profiles if p]
        timeout = min(timeouts) if timeouts else None
    if lock is None:
        lock = any(p["lock"] for p in profiles if p)
    del keep_fresh

    def decorator(func):
        return _OrmCached(func, timeout, extra, querysets, lock)

    return decorator


def _view(decorate):
    """Wraps a view so that GET/HEAD responses are cached by ``decorate`` keyed on the
    request's full path and the view's arguments; other methods pass through."""
    def wrap(view):
        @decorate
        def render(path, *args, **kwargs):
            request = _current.request
            response = view(request, *args, **kwargs)
            if hasattr(response, "render") and callable(response.render):
                response = response.render()
            return response

        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            if request.method not in ("GET", "HEAD"):
                return view(request, *args, **kwargs)
            _current.request = request
            try:
                return render(request.get_full_path(), *args, **kwargs)
            finally:
                _current.request = None

        wrapper.invalidate = lambda path, *a, **kw: render.invalidate(path, *a, **kw)
        return wrapper

    return wrap


def cached_view(timeout=None, extra=None):
    """``cached`` for a view: GET/HEAD responses keyed on the full path."""
    return _view(cached(timeout=timeout, extra=extra))


def cached_view_as(*samples, timeout=None, extra=None, lock=None, keep_fresh=False):
    """``cached_as`` for a view: GET/HEAD responses keyed on the full path."""
    return _view(cached_as(*samples, timeout=timeout, extra=extra, lock=lock,
                           keep_fresh=keep_fresh))
