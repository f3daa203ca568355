"""Caching decorators: ``cached`` for functions and methods, ``cached_view`` for views
(``cache_page`` with tags). Both store tagged entries (tags.py), so a hit is one
``get_many`` of the entry and its tag counters: one C++ call on the embedded default, one
``MGET`` on Redis.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import logging
import pickle
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.middleware.cache import CacheMiddleware
from django.utils.cache import has_vary_header, patch_vary_headers
from django.utils.functional import SimpleLazyObject

from . import tags as _tags
from .orm import transaction as _txn

__all__ = ["TaggedCacheMiddleware", "cached", "cached_view", "stable_key"]

_FN_TAG = "fastcache.fn:"
logger = logging.getLogger("django_fastcache.decorators")


# ---------------------------------------------------------------------- stable keys

def _encode(value: Any, out: list, where: str) -> None:
    """Appends a canonical, type-tagged, length-prefixed text of ``value`` to ``out``:
    equal arguments give equal text in every process (no ids, no hash seeds)."""
    t = type(value)
    if value is None or t is bool:
        out.append(f"{value!r};")
    elif t is int:
        out.append(f"i{value};")
    elif t is float:
        out.append(f"f{value!r};")
    elif t is str:
        out.append(f"s{len(value)}:{value}")
    elif t is bytes:
        out.append(f"b{len(value)}:{value.hex()}")
    elif t in (tuple, list):
        out.append(f"{'t' if t is tuple else 'l'}{len(value)}(")
        for item in value:
            _encode(item, out, where)
        out.append(")")
    elif t is dict:
        items = []
        for k, v in value.items():
            kp: list = []
            _encode(k, kp, where)
            items.append(("".join(kp), v))
        items.sort(key=lambda kv: kv[0])
        out.append(f"d{len(items)}(")
        for k, v in items:
            out.append(k)
            _encode(v, out, where)
        out.append(")")
    elif t in (set, frozenset):
        parts = []
        for item in value:
            p: list = []
            _encode(item, p, where)
            parts.append("".join(p))
        out.append(f"S{len(parts)}(" + "".join(sorted(parts)) + ")")
    elif t in (decimal.Decimal, uuid.UUID):
        out.append(f"{t.__name__[0]}{value};")
    elif t in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta):
        out.append(f"{t.__name__}:{value!r};")
    elif isinstance(value, enum.Enum):
        out.append(f"E{t.__module__}.{t.__qualname__}:")
        _encode(value.value, out, where)
    elif isinstance(value, type):
        out.append(f"T{value.__module__}.{value.__qualname__};")
    elif hasattr(value, "__fastcache_key__"):
        out.append(f"K{t.__module__}.{t.__qualname__}:")
        _encode(value.__fastcache_key__(), out, where)
    elif hasattr(value, "_meta") and hasattr(value, "pk") and hasattr(value._meta, "label"):
        if value.pk is None:
            raise TypeError(f"cached(): argument {where} is an unsaved {value._meta.label}: "
                            "it has no primary key to build a cache key from")
        out.append(f"M{value._meta.label}:")
        _encode(value.pk, out, where)
    else:
        raise TypeError(
            f"cached(): cannot build a stable cache key from argument {where} of type "
            f"{t.__module__}.{t.__qualname__}; pass key=..., or give the class a "
            "__fastcache_key__() method returning the value that identifies it")


def stable_key(*values: Any) -> str:
    """32 hex digits identifying ``values`` the same way in every process."""
    out: list = []
    for i, v in enumerate(values):
        _encode(v, out, f"#{i}")
    return hashlib.sha256("".join(out).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _format(template: str, arguments: dict, what: str) -> str:
    try:
        return template.format(**arguments)
    except (KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"cached(): {what} {template!r} names {exc}, which is not an "
                         f"argument (arguments: {', '.join(arguments)})") from None


# ---------------------------------------------------------------------- @cached

# FastCache instances are thread-safe (the store locks its shards, redis-py pools are
# thread-safe), so one per alias serves every thread: ``caches[alias]`` costs about a
# microsecond (an asgiref Local lookup), as much as the hit itself.
_backends: dict = {}


@receiver(setting_changed)
def _forget_backends(*, setting: str, **kwargs) -> None:
    if setting == "CACHES":
        _backends.clear()


class _Cached:
    """A function whose results are cached; see :func:`cached`. Thread-safe; the cache
    backend is looked up on each call (Django keeps one instance per thread)."""

    def __init__(self, func: Callable, timeout, key, tags, cache: str, version) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self.timeout = timeout
        self.cache_alias = cache
        self.version = version
        self.is_async = inspect.iscoroutinefunction(func)
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.fn_tag = _FN_TAG + (self.name if len(self.name) <= 150 else stable_key(self.name))
        self._key = key
        self._sig = inspect.signature(func)
        params = list(self._sig.parameters.values())
        simple = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        self._npos = len(params) if simple else -1
        self._names = [p.name for p in params]
        self._tags_fn = tags if callable(tags) else None
        static = () if tags is None or callable(tags) else (
            (tags,) if isinstance(tags, str) else tuple(tags))
        self._tag_templates = [t for t in static if "{" in t]
        fixed = _tags.normalize([self.fn_tag, *(t for t in static if "{" not in t)])
        self._fixed_tags = fixed
        self._fixed_tkeys = [_tags.tag_key(t) for t in fixed]
        self._needs_arguments = bool(self._tags_fn or self._tag_templates or
                                     (key is not None and not callable(key)))

    def _cache(self):
        cache = _backends.get(self.cache_alias)
        if cache is None:
            cache = caches[self.cache_alias]
            if not hasattr(cache, "invalidate_tags"):
                raise ImproperlyConfigured(
                    f"cached() needs a FastCache; CACHES[{self.cache_alias!r}] is "
                    f"{type(cache).__module__}.{type(cache).__qualname__}")
            _backends[self.cache_alias] = cache
        return cache

    def _arguments(self, args, kwargs) -> dict:
        bound = self._sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def key_and_tags(self, args: tuple, kwargs: dict) -> tuple[str, tuple, list | None]:
        """The cache key of one call, its tags (normalized) and their counter keys."""
        arguments = None
        if not kwargs and len(args) == self._npos:
            values = args
        else:
            arguments = self._arguments(args, kwargs)
            values = tuple(arguments.values())
        if self._needs_arguments and arguments is None:
            arguments = dict(zip(self._names, args, strict=True))
        key = self._key
        if key is None:
            key = f"{self.fn_tag}:{stable_key(*values)}"
        elif callable(key):
            key = str(key(*args, **kwargs))
        else:
            key = _format(key, arguments, "key")
        if not (self._tags_fn or self._tag_templates):
            return key, self._fixed_tags, self._fixed_tkeys
        extra = [_format(t, arguments, "tag") for t in self._tag_templates]
        if self._tags_fn is not None:
            got = self._tags_fn(*args, **kwargs)
            extra.extend((got,) if isinstance(got, str) else got)
        return key, _tags.normalize([*self._fixed_tags, *extra]), None

    def __call__(self, *args, **kwargs):
        if self.is_async:
            return self._acall(args, kwargs)
        cache = self._cache()
        key, tags, tkeys = self.key_and_tags(args, kwargs)
        if _txn.any_dirty():  # a transaction that has written reads its own writes
            return self.func(*args, **kwargs)
        value, gens = _tags.get_tagged(cache, key, tags, self.version, tkeys)
        if value is not _tags.MISS:
            return value
        value = self.func(*args, **kwargs)
        self._store(cache, key, value, tags, gens)
        return value

    def _store(self, cache, key, value, tags, gens) -> None:
        # Inside atomic(), only once everything commits: a value read from a transaction
        # that rolls back must never be cached (the snapshot keeps later mutations out).
        if _txn.in_atomic():
            snapshot = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            _txn.store_after_commit(lambda: _tags.set_tagged(
                cache, key, pickle.loads(snapshot), tags, gens, self.timeout, self.version))
        else:
            _tags.set_tagged(cache, key, value, tags, gens, self.timeout, self.version)

    async def _acall(self, args, kwargs):
        cache = self._cache()
        key, tags, tkeys = self.key_and_tags(args, kwargs)
        value, gens = await _tags.aget_tagged(cache, key, tags, self.version, tkeys)
        if value is not _tags.MISS:
            return value
        value = await self.func(*args, **kwargs)
        await _tags.aset_tagged(cache, key, value, tags, gens, self.timeout, self.version)
        return value

    def invalidate(self, *args, **kwargs) -> bool:
        """Drops the cached result of the call with these arguments; True if there was one."""
        key, _, _ = self.key_and_tags(args, kwargs)
        return self._cache().delete(key, version=self.version)

    def invalidate_all(self) -> None:
        """Drops every cached result of this function (one counter increment, no scan)."""
        self._cache().invalidate_tags(self.fn_tag)

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return _BoundCached(self, instance)


class _BoundCached:
    """``obj.method`` of a cached method: calls and ``invalidate`` take ``obj`` first."""

    __slots__ = ("_cached", "_instance")

    def __init__(self, cached_fn: _Cached, instance) -> None:
        self._cached = cached_fn
        self._instance = instance

    def __call__(self, *args, **kwargs):
        return self._cached(self._instance, *args, **kwargs)

    def invalidate(self, *args, **kwargs) -> bool:
        return self._cached.invalidate(self._instance, *args, **kwargs)

    def invalidate_all(self) -> None:
        self._cached.invalidate_all()

    def __getattr__(self, name):
        return getattr(self._cached, name)


def cached(timeout: Any = DEFAULT_TIMEOUT, *, key: str | Callable | None = None,
           tags: Iterable[str] | str | Callable | None = None, cache: str = "default",
           version: int | None = None):
    """Caches a function's (or method's, sync or async) results in a FastCache.

    ``timeout``: seconds as for ``cache.set`` (default: the cache's). ``key``: by default
    ``fastcache.fn:<module>.<qualname>:<hash of the arguments>``, the arguments bound to
    the signature first (so ``f(1)``, ``f(x=1)`` and ``f()`` with default ``x=1`` share
    an entry) and encoded canonically (strings, numbers, containers, dates, Decimal,
    UUID, enums, classes, model instances by label and pk, objects with
    ``__fastcache_key__()``); else a template (``"post:{post_id}"``) or a callable taking
    the arguments. ``tags``: strings, templates formatted with the arguments, or a callable
    taking the arguments; entries are also tagged with the function itself, which is what
    ``invalidate_all()`` moves. ``None`` results are cached too.
    """
    if callable(timeout) and not isinstance(timeout, (int, float)):
        return _Cached(timeout, DEFAULT_TIMEOUT, key, tags, cache, version)  # bare @cached

    def decorator(func: Callable) -> _Cached:
        return _Cached(func, timeout, key, tags, cache, version)

    return decorator


# ---------------------------------------------------------------------- cached_view

class _TaggingCache:
    """The cache as ``CacheMiddleware`` sees it for one request: reads check the tags in
    the same ``get_many``; writes store under the counters the first read saw, so a page
    rendered while an invalidation happened is stale at once rather than cached."""

    def __init__(self, cache, tags: tuple[str, ...]) -> None:
        self._cache = cache
        self._tags = tags
        self._tkeys = [_tags.tag_key(t) for t in tags]
        self._gens: tuple | None = None
        self._seen = False

    def get(self, key, default=None, version=None):
        value, gens = _tags.get_tagged(self._cache, key, self._tags, version, self._tkeys)
        if not self._seen:
            self._gens, self._seen = gens, True
        return default if value is _tags.MISS else value

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        # Inside atomic() (ATOMIC_REQUESTS): a snapshot, stored once everything commits.
        if _txn.in_atomic():
            snapshot, gens = pickle.dumps(value, pickle.HIGHEST_PROTOCOL), self._gens
            _txn.store_after_commit(lambda: _tags.set_tagged(
                self._cache, key, pickle.loads(snapshot), self._tags, gens, timeout, version))
            return
        _tags.set_tagged(self._cache, key, value, self._tags, self._gens, timeout, version)

    def __getattr__(self, name):
        return getattr(self._cache, name)


class TaggedCacheMiddleware(CacheMiddleware):
    """Django's ``CacheMiddleware`` (all of ``cache_page``'s rules: GET/HEAD only, 200s,
    ``Vary``, ``Cache-Control``, ``max-age``) storing pages under tags. One instance per
    request when the tags depend on it."""

    def __init__(self, get_response, *, tags: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(get_response, **kwargs)
        self.tags = tags
        self._tagging: _TaggingCache | None = None

    @property
    def cache(self):
        cache = caches[self.cache_alias]
        if not self.tags:
            return cache
        if self._tagging is None:
            if not hasattr(cache, "invalidate_tags"):
                raise ImproperlyConfigured(
                    f"cached_view(tags=...) needs a FastCache; CACHES[{self.cache_alias!r}] is "
                    f"{type(cache).__module__}.{type(cache).__qualname__}")
            self._tagging = _TaggingCache(cache, self.tags)
        return self._tagging


_REASONS = {
    "session": "the view read the session",
    "user": "the view read request.user",
    "csrf": "the page holds a CSRF token",
    "cookie": "the response sets a cookie",
    "private": "the response is marked Cache-Control: private or no-store",
}


class _Watch:
    """What the view (and its template) reads of the visitor, from its call to the end of
    rendering. Reads made before it by middleware (a log middleware putting the user id
    in the log context, say) do not count: they say nothing about the page.

    The session's ``accessed`` flag is cleared for the view and restored (or-ed with the
    view's reads) when the response is stored or declined, so SessionMiddleware still
    adds ``Vary: Cookie`` as it would have; ``request.user`` is replaced by a lazy proxy
    of itself that notes its first use."""

    def __init__(self, request) -> None:
        self.request = request
        self.user_read = False
        self.session = getattr(request, "session", None)
        self.accessed_before = bool(getattr(self.session, "accessed", False))
        self.modified_before = bool(getattr(self.session, "modified", False))
        if self.session is not None and hasattr(self.session, "accessed"):
            self.session.accessed = False
        self.acached_before = "_acached_user" in request.__dict__
        user = request.__dict__.get("user")
        if user is not None:
            def load():
                self.user_read = True
                return user

            request.user = SimpleLazyObject(load)

    def reasons(self, response) -> set[str]:
        """Why ``response`` may belong to one visitor only (keys of _REASONS; empty: none).
        Call once: it restores the session's flag."""
        request, reasons = self.request, set()
        if self.session is not None and hasattr(self.session, "accessed"):
            accessed = bool(self.session.accessed)
            self.session.accessed = accessed or self.accessed_before
            if accessed or (self.session.modified and not self.modified_before):
                reasons.add("session")
        if self.user_read or ("_acached_user" in request.__dict__ and not self.acached_before):
            reasons.add("user")
        if request.META.get("CSRF_COOKIE_NEEDS_UPDATE") or request.META.get("CSRF_COOKIE_USED"):
            reasons.add("csrf")
        if response.cookies:
            reasons.add("cookie")
        cache_control = {d.strip().split("=")[0].lower()
                         for d in response.get("Cache-Control", "").split(",")}
        if cache_control & {"private", "no-store"}:
            reasons.add("private")
        return reasons


def _allowed_reasons(request, response, per_user: bool) -> set[str]:
    """What an entry keyed per visitor may depend on: with ``Vary: Cookie`` the session,
    user and CSRF token all come from the cookie in the key; keyed by user id, a signed-in
    user's session and user (a CSRF secret differs per browser, an anonymous visitor's
    session per visitor: not those)."""
    if has_vary_header(response, "Cookie"):
        return {"session", "user", "csrf"}
    if per_user:
        user = getattr(request, "user", None)
        return {"session", "user"} if user is not None and user.is_authenticated else {"user"}
    return set()


def cached_view(timeout: float | None = None, *, cache: str | None = None,
                key_prefix: str | None = None,
                tags: Iterable[str] | str | Callable | None = None,
                per_user: bool = False, vary_on_cookie: bool = False):
    """``cache_page(timeout, cache=..., key_prefix=...)`` with tags: the page is a miss
    once any tag is invalidated (``cache.invalidate_tags``, ``invalidate_on_change``).

    ``tags``: strings; templates formatted with the view's keyword arguments
    (``"post:{post_id}"``); or a callable ``(request, *args, **kwargs)`` returning tags.

    Unlike ``cache_page``, a page that may belong to one visitor is not stored: one whose
    view read the session or ``request.user``, used the CSRF token, set a cookie, or
    marked the response ``Cache-Control: private`` or ``no-store`` (logged once per
    view). ``per_user=True`` keys entries by the user's id (anonymous visitors share one
    entry) and ``vary_on_cookie=True`` (or a view answering ``Vary: Cookie``) keys them by
    the ``Cookie`` header, as Django's ``vary_on_cookie``: then pages that read the
    session or the user are stored, per user. Cookies and private responses never are.
    """
    if isinstance(tags, str):
        tags = (tags,)
    static = None if tags is None or callable(tags) or any("{" in t for t in tags) else \
        _tags.normalize(tags)

    def tags_for(request, args, kwargs) -> tuple[str, ...]:
        if static is not None:
            return static
        if callable(tags):
            got = tags(request, *args, **kwargs)
            return _tags.normalize((got,) if isinstance(got, str) else got)
        return _tags.normalize([t.format(**kwargs) if "{" in t else t for t in tags])

    def decorator(view: Callable) -> Callable:
        name = f"{getattr(view, '__module__', '?')}.{getattr(view, '__qualname__', view)!s}"
        declined = []  # logged once per view

        def middleware(request, args, kwargs) -> TaggedCacheMiddleware:
            prefix = key_prefix
            if per_user:
                if prefix is None:
                    prefix = settings.CACHE_MIDDLEWARE_KEY_PREFIX
                user = getattr(request, "user", None)
                ident = user.pk if user is not None and user.is_authenticated else "anon"
                prefix = f"{prefix}.user.{ident}"
            # Per request: the tagging view of the cache remembers the counters it read.
            return TaggedCacheMiddleware(view, page_timeout=timeout, cache_alias=cache,
                                         key_prefix=prefix,
                                         tags=tags_for(request, args, kwargs) if tags else ())

        def store(mw, request, response, watch):
            if vary_on_cookie:
                patch_vary_headers(response, ("Cookie",))
            reasons = watch.reasons(response)
            if reasons:
                reasons -= _allowed_reasons(request, response, per_user)
            if not reasons:
                return mw.process_response(request, response)
            if not declined:
                declined.append(True)
                logger.warning(
                    "cached_view(%s) did not store a response: %s. A page that may belong to "
                    "one visitor is not shared; pass per_user=True or vary_on_cookie=True to "
                    "cache it per user (logged once per view)",
                    name, "; ".join(_REASONS[r] for r in sorted(reasons)))
            return response

        def finish(mw, request, response, watch):
            if hasattr(response, "render") and callable(response.render):
                response.add_post_render_callback(lambda r: store(mw, request, r, watch))
                return response
            return store(mw, request, response, watch)

        if inspect.iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(request, *args, **kwargs):
                mw = middleware(request, args, kwargs)
                hit = await sync_to_async(mw.process_request)(request)
                if hit is not None:
                    return hit
                watch = _Watch(request)
                response = await view(request, *args, **kwargs)
                return await sync_to_async(finish)(mw, request, response, watch)

            return async_wrapper

        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            mw = middleware(request, args, kwargs)
            hit = mw.process_request(request)
            if hit is not None:
                return hit
            watch = _Watch(request)
            return finish(mw, request, view(request, *args, **kwargs), watch)

        return wrapper

    return decorator
