"""System checks for cache set-ups that work on one process and fail in production:
a Redis cache without ``KEY_PREFIX``, sessions or DRF throttles on a cache each worker
process has its own copy of. (Throttle settings and rates are checked in limiter.py and
throttling.py.) Registered by the app config."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.module_loading import import_string

__all__ = [
    "check_caches", "check_django_redis_options", "check_sessions", "check_throttle_caches",
    "check_throttle_proxies", "check_unsigned_pickle", "is_shared",
]

_SESSION_ENGINES = ("django.contrib.sessions.backends.cache",
                    "django.contrib.sessions.backends.cached_db")


def _backend(alias: str):
    from django.core.cache import caches

    try:
        return caches[alias]
    except Exception:  # noqa: BLE001 - a broken CACHES entry is reported by Django's own check
        return None


def is_shared(cache: Any) -> bool | None:
    """Whether every worker process sees the same data in ``cache``: False for the
    embedded FastCache, LocMemCache and DummyCache; None when unknown."""
    from django.core.cache.backends.dummy import DummyCache
    from django.core.cache.backends.locmem import LocMemCache

    if cache is None:
        return None
    if hasattr(cache, "redis_client") and hasattr(cache, "invalidate_tags"):
        return cache.redis_client() is not None
    return not isinstance(cache, (LocMemCache, DummyCache))


def _describe(cache) -> str:
    from .cache import FastCache

    if isinstance(cache, FastCache):
        return "the embedded FastCache (an in-process store)"
    return f"{type(cache).__module__}.{type(cache).__qualname__}"


@checks.register(checks.Tags.caches)
def check_caches(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """fastcache.W201: a FastCache in Redis without KEY_PREFIX."""
    out: list[checks.CheckMessage] = []
    for alias, conf in getattr(settings, "CACHES", {}).items():
        if conf.get("BACKEND") != "django_fastcache.cache.FastCache":
            continue
        cache = _backend(alias)
        if cache is not None and cache.redis_client() is not None and not conf.get("KEY_PREFIX"):
            out.append(checks.Warning(
                f"CACHES[{alias!r}] is a FastCache in Redis without a KEY_PREFIX: its keys "
                "mix with every other user of the database, and cache.clear() runs FLUSHDB.",
                hint=f"Set CACHES[{alias!r}]['KEY_PREFIX'] to a name for this site.",
                id="fastcache.W201"))
    return out


@checks.register(checks.Tags.caches)
def check_django_redis_options(app_configs: Any = None,
                               **kwargs: Any) -> list[checks.CheckMessage]:
    """fastcache.I301: a django-redis option or setting that FastCache translated; names
    what to write instead. (Options it cannot translate fail at start-up.)"""
    from django.core.exceptions import ImproperlyConfigured

    from .compat import translate_options

    out: list[checks.CheckMessage] = []
    for alias, conf in getattr(settings, "CACHES", {}).items():
        if conf.get("BACKEND") != "django_fastcache.cache.FastCache":
            continue
        try:
            from .cache import _is_redis

            options = dict(conf.get("OPTIONS") or {})
            _, notes = translate_options(options, settings,
                                         redis=_is_redis(conf.get("LOCATION", ""), options))
        except ImproperlyConfigured:
            continue  # raised, with its message, when the cache is built
        for theirs, ours in notes:
            out.append(checks.Info(
                f"CACHES[{alias!r}]: django-redis's {theirs} is translated; FastCache "
                f"equivalent: {ours}.",
                hint="Write FastCache's form in settings to silence this message.",
                id="fastcache.I301"))
    return out


@checks.register(checks.Tags.caches)
def check_sessions(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """fastcache.E202 (unknown SESSION_CACHE_ALIAS), fastcache.W203 (cache sessions on a
    per-process or dummy cache)."""
    engine = getattr(settings, "SESSION_ENGINE", "")
    if engine not in _SESSION_ENGINES:
        return []
    alias = getattr(settings, "SESSION_CACHE_ALIAS", "default")
    if alias not in getattr(settings, "CACHES", {}):
        return [checks.Error(
            f"SESSION_ENGINE is {engine!r} but SESSION_CACHE_ALIAS {alias!r} is not in CACHES.",
            id="fastcache.E202")]
    cache = _backend(alias)
    if engine.endswith(".cache") and is_shared(cache) is False:
        return [checks.Warning(
            f"Sessions are stored only in cache {alias!r}, which is {_describe(cache)}: each "
            "worker process has its own, so a user is logged out whenever a request reaches "
            "another process (and on every restart).",
            hint="Use a Redis LOCATION for that cache, or SESSION_ENGINE "
                 "'django.contrib.sessions.backends.cached_db'.",
            id="fastcache.W203")]
    return []


@checks.register(checks.Tags.caches)
def check_throttle_caches(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """fastcache.E204 (DRF throttle on a DummyCache: never throttles), fastcache.W205
    (DRF's own throttle on a per-process cache), fastcache.I206 (one of ours with its own
    ``cache`` that is per process; the default cache is fastcache.I101's)."""
    from django.core.cache import cache as default_proxy
    from django.core.cache.backends.dummy import DummyCache

    rest = getattr(settings, "REST_FRAMEWORK", None) or {}
    out: list[checks.CheckMessage] = []
    for path in rest.get("DEFAULT_THROTTLE_CLASSES", ()):
        if not isinstance(path, str):
            continue
        try:
            cls = import_string(path)
        except ImportError:
            continue  # DRF reports an unimportable class itself
        cache = getattr(cls, "cache", None)
        if cache is None or not hasattr(cache, "get"):
            continue
        is_default = cache is default_proxy
        if is_default:  # DRF's default: the django.core.cache.cache proxy
            cache = _backend("default")
        ours = any(c.__module__ == "django_fastcache.throttling" for c in cls.__mro__)
        if ours and getattr(cls, "algorithm", "sliding_log") in ("gcra", "sliding_window"):
            from . import limiter

            if limiter.store_kind(cache) == "cache" and is_shared(cache) is not False:
                out.append(checks.Error(
                    f"Throttle {path} uses algorithm {cls.algorithm!r} on "
                    f"{_describe(cache)}, which cannot update its state atomically.",
                    hint="Use sliding_log or fixed_window on that cache, or a FastCache or "
                         "Redis cache.",
                    id="fastcache.E208"))
        if ours:
            if not is_default and is_shared(cache) is False:
                out.append(checks.Info(
                    f"Throttle {path} checks limits in each process: its cache is "
                    f"{_describe(cache)}.",
                    hint="Give it a FastCache with a Redis LOCATION to share limits.",
                    id="fastcache.I206"))
        elif isinstance(cache, DummyCache):
            out.append(checks.Error(
                f"Throttle {path} stores its history in a DummyCache: it never throttles.",
                hint="Use a real cache, or django_fastcache.throttling's classes (on a "
                     "DummyCache they count in each process's own table).",
                id="fastcache.E204"))
        elif is_shared(cache) is False:
            out.append(checks.Warning(
                f"Throttle {path} stores its history in {_describe(cache)}: every worker "
                "process counts separately, so clients get the limit once per process.",
                hint="Use a shared cache, or django_fastcache.throttling's classes on a "
                     "FastCache with a Redis LOCATION (one atomic check, exact limits).",
                id="fastcache.W205"))
    return out


@checks.register(checks.Tags.caches, checks.Tags.security)
def check_unsigned_pickle(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """fastcache.W210: ``PICKLE="unsigned"`` on a FastCache in Redis. Whoever can write to
    that Redis can then make every worker unpickle bytes of their choosing: run code."""
    out: list[checks.CheckMessage] = []
    for alias, conf in getattr(settings, "CACHES", {}).items():
        if conf.get("BACKEND") != "django_fastcache.cache.FastCache":
            continue
        if (conf.get("OPTIONS") or {}).get("PICKLE") != "unsigned":
            continue
        cache = _backend(alias)
        if cache is not None and cache.redis_client() is not None:
            out.append(checks.Warning(
                f"CACHES[{alias!r}] reads unsigned pickles from Redis (OPTIONS['PICKLE'] = "
                "'unsigned'): anyone who can write to that Redis (another app, a leaked "
                "password, an open port) can run code in every worker that reads the key.",
                hint="Remove OPTIONS['PICKLE'] (signed pickles, the default) or set it to "
                     "'forbid'. See docs/security.md.",
                id="fastcache.W210"))
    return out


@checks.register(checks.Tags.security)
def check_throttle_proxies(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """fastcache.W207: DRF throttles identify anonymous clients by X-Forwarded-For, which
    the client writes, unless NUM_PROXIES says how many proxies to trust."""
    rest = getattr(settings, "REST_FRAMEWORK", None) or {}
    if not rest.get("DEFAULT_THROTTLE_CLASSES") or rest.get("NUM_PROXIES") is not None:
        return []
    return [checks.Warning(
        "DRF throttles are configured with REST_FRAMEWORK['NUM_PROXIES'] = None: an "
        "anonymous client is identified by the whole X-Forwarded-For header it sends, so "
        "it can send a new value with each request and never be throttled (and fill the "
        "throttle state with identities).",
        hint="Set REST_FRAMEWORK['NUM_PROXIES'] to the number of proxies in front of the "
             "site that append to X-Forwarded-For (0 when clients connect directly: "
             "REMOTE_ADDR is used).",
        id="fastcache.W207")]
