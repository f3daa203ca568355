"""The ORM cache's settings, read as django-cacheops reads them (``CACHEOPS``,
``CACHEOPS_DEFAULTS``, ``CACHEOPS_ENABLED``, ``CACHEOPS_DEGRADE_ON_FAILURE``), plus
``FASTCACHE_ORM_CACHE``: the alias in ``CACHES`` the entries live in (default
``"default"``), ``FASTCACHE_ORM_STRICT`` (default False, see ``strict()``) and
``FASTCACHE_ORM_LAZY_FILTER`` (default True, see ``lazy_filter()``). Read
lazily, validated once at start-up (``validate()``, called from the app's ``ready()``),
reset when a test changes a setting."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["ALL_OPS", "cache_alias", "degrade_on_failure", "enabled", "lazy_filter",
           "model_profile", "strict", "validate"]

ALL_OPS = frozenset({"get", "fetch", "count", "aggregate", "exists"})
_PROFILE_KEYS = {"ops", "timeout", "local_get", "cache_on_save", "lock", "db_agnostic"}
_SETTINGS = ("CACHEOPS", "CACHEOPS_DEFAULTS", "CACHEOPS_ENABLED", "CACHEOPS_DEGRADE_ON_FAILURE",
             "CACHEOPS_REDIS", "FASTCACHE_ORM_CACHE", "FASTCACHE_ORM_STRICT",
             "FASTCACHE_ORM_LAZY_FILTER", "CACHES")

_state: dict[str, Any] = {}
# Moves whenever a setting above changes: what was derived from them (the cache instance a
# thread keeps, invalidation.get_cache) is derived again.
generation = 0


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs) -> None:
    global generation
    if setting in _SETTINGS:
        _state.clear()
        generation += 1
        from . import lazy, query

        query.forget_profiles()
        if setting == "FASTCACHE_ORM_LAZY_FILTER" and kwargs.get("value"):
            lazy.install(query._profile)  # patched only once wanted (query.install())


def _ops(value, where: str) -> frozenset:
    if value == "all":
        return ALL_OPS
    if isinstance(value, str):
        value = (value,)
    try:
        ops = frozenset(value)
    except TypeError:
        raise ImproperlyConfigured(f"{where}: \"ops\" must be 'all', an op name or a list of "
                                   f"them, not {value!r}") from None
    unknown = sorted(map(repr, ops - ALL_OPS))
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown ops {', '.join(unknown)}; known: "
                                   f"{', '.join(sorted(ALL_OPS))} or 'all'")
    return ops


def _profile(name: str, raw, defaults: dict) -> dict | None:
    where = f"CACHEOPS[{name!r}]"
    if raw is None:
        return None  # cacheops: an explicit None turns caching off for that model
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"{where} must be a dict of options, not {raw!r}")
    unknown = sorted(set(raw) - _PROFILE_KEYS)
    if unknown:
        raise ImproperlyConfigured(f"{where}: unknown options {', '.join(map(repr, unknown))}; "
                                   f"known: {', '.join(sorted(_PROFILE_KEYS))}")
    p = {"ops": (), "local_get": False, "db_agnostic": True, "lock": False,
         "cache_on_save": False, **defaults, **raw}
    if "timeout" not in p:
        raise ImproperlyConfigured(f'{where}: the "timeout" option is required (here or in '
                                   "CACHEOPS_DEFAULTS)")
    t = p["timeout"]
    if isinstance(t, bool) or not isinstance(t, int) or t <= 0:
        raise ImproperlyConfigured(f'{where}: "timeout" must be a positive integer of seconds, '
                                   f"not {t!r}")
    p["ops"] = _ops(p["ops"], where)
    cos = p["cache_on_save"]
    if not isinstance(cos, (bool, str)):
        raise ImproperlyConfigured(f'{where}: "cache_on_save" must be a bool or a field name')
    for flag in ("local_get", "lock", "db_agnostic"):
        if not isinstance(p[flag], bool):
            raise ImproperlyConfigured(f'{where}: "{flag}" must be True or False')
    return p


def _load() -> dict:
    if _state:
        return _state
    defaults = getattr(settings, "CACHEOPS_DEFAULTS", {}) or {}
    if not isinstance(defaults, dict):
        raise ImproperlyConfigured("CACHEOPS_DEFAULTS must be a dict")
    unknown = sorted(set(defaults) - _PROFILE_KEYS)
    if unknown:
        raise ImproperlyConfigured(f"CACHEOPS_DEFAULTS: unknown options "
                                   f"{', '.join(map(repr, unknown))}")
    raw = getattr(settings, "CACHEOPS", {}) or {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured("CACHEOPS must be a dict of 'app.model' (or 'app.*', '*.*') "
                                   "to options")
    profiles = {}
    for name, prof in raw.items():
        if not isinstance(name, str) or name.count(".") != 1:
            raise ImproperlyConfigured(f"CACHEOPS key {name!r} must be 'app_label.model', "
                                       "'app_label.*' or '*.*'")
        profiles[name.lower()] = _profile(name, prof, defaults)
    alias = getattr(settings, "FASTCACHE_ORM_CACHE", "default")
    if not isinstance(alias, str) or alias not in settings.CACHES:
        raise ImproperlyConfigured(f"FASTCACHE_ORM_CACHE names cache {alias!r}, which is not "
                                   "in CACHES")
    redis_conf = getattr(settings, "CACHEOPS_REDIS", None)
    if redis_conf is not None and not isinstance(redis_conf, (str, dict)):
        raise ImproperlyConfigured("CACHEOPS_REDIS must be a URL or a dict (it is accepted for "
                                   "compatibility and not used: the cache FASTCACHE_ORM_CACHE "
                                   "names decides where entries live)")
    for flag in ("CACHEOPS_ENABLED", "CACHEOPS_DEGRADE_ON_FAILURE", "FASTCACHE_ORM_STRICT",
                 "FASTCACHE_ORM_LAZY_FILTER"):
        if not isinstance(getattr(settings, flag, False), bool):
            raise ImproperlyConfigured(f"{flag} must be True or False")
    _state.update(profiles=profiles, alias=alias,
                  enabled=getattr(settings, "CACHEOPS_ENABLED", True),
                  degrade=getattr(settings, "CACHEOPS_DEGRADE_ON_FAILURE", False),
                  strict=getattr(settings, "FASTCACHE_ORM_STRICT", False),
                  lazy_filter=getattr(settings, "FASTCACHE_ORM_LAZY_FILTER", True))
    return _state


def validate() -> None:
    """Reads and checks every setting; ImproperlyConfigured naming the bad one."""
    global generation
    _state.clear()
    generation += 1
    _load()
    from django.core.cache import caches

    cache = caches[_state["alias"]]
    if not hasattr(cache, "invalidate_tags"):
        raise ImproperlyConfigured(
            f"FASTCACHE_ORM_CACHE: CACHES[{_state['alias']!r}] must be a "
            "django_fastcache.cache.FastCache (the ORM cache uses its generation counters)")


def model_profile(model) -> dict | None:
    """The profile of ``model`` (``app.model``, then ``app.*``, then ``*.*``), or None."""
    if model.__module__ == "__fake__" or model._meta.abstract:
        return None
    profiles = _load()["profiles"]
    app = model._meta.app_label.lower()
    for guess in (f"{app}.{model._meta.model_name}", f"{app}.*", "*.*"):
        if guess in profiles:
            return profiles[guess]
    return None


def enabled() -> bool:
    return _load()["enabled"]


def degrade_on_failure() -> bool:
    return _load()["degrade"]


def cache_alias() -> str:
    return _load()["alias"]


def lazy_filter() -> bool:
    """FASTCACHE_ORM_LAZY_FILTER: plain filter()s on cached models are applied only when
    the Query is needed (a miss), not on a hit (lazy.py)."""
    return _load()["lazy_filter"]


def strict() -> bool:
    """FASTCACHE_ORM_STRICT: on Redis, a hit checks its counters in Redis (one round trip)
    instead of trusting the coherent L1, whose invalidations arrive asynchronously."""
    return _load()["strict"]
