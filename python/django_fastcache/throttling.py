"""Drop-in replacements for DRF's rate throttles whose check is one atomic operation.

Change the import path in ``DEFAULT_THROTTLE_CLASSES`` or ``throttle_classes`` and nothing
else: ``scope``, ``rate``, ``THROTTLE_RATES``, ``get_cache_key``, ``get_ident`` (with
``NUM_PROXIES``), ``cache``, ``timer`` and ``wait()`` keep DRF's meaning. Added class
attributes: ``algorithm`` ("sliding_log", the default and DRF's own semantics; "gcra";
"sliding_window"; "fixed_window"), ``burst`` (gcra), ``cost`` (or ``get_cost()``) and
``failure_mode`` (overrides ``FASTCACHE_THROTTLE['FAILURE_MODE']``).

The state follows the ``cache`` attribute as in DRF (see limiter._store_for): the embedded
FastCache keeps it in a table of its LOCATION (its clear() resets it); a FastCache on Redis,
django-redis and Django's RedisCache run one Lua script through that cache's own client,
keys under its KEY_PREFIX and version (its clock unless ``timer`` is overridden); any
other cache runs DRF's own algorithm on it. Control API: ``reset()`` and ``peek()`` on a
throttle instance; ``limiter.set_enabled()`` / ``FASTCACHE_THROTTLE['ENABLED']``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core import checks
from django.core.cache import cache as default_cache
from django.core.exceptions import ImproperlyConfigured
from rest_framework import throttling as drf_throttling
from rest_framework.settings import api_settings

from . import limiter
from .errors import InvalidRate

__all__ = [
    "AnonRateThrottle",
    "BaseThrottle",
    "ScopedRateThrottle",
    "SimpleRateThrottle",
    "UserRateThrottle",
]

BaseThrottle = drf_throttling.BaseThrottle
_DEFAULT_CACHE_FORMAT = "throttle_%(scope)s_%(ident)s"


class SimpleRateThrottle(drf_throttling.SimpleRateThrottle):
    """DRF's ``SimpleRateThrottle`` contract with an atomic, exact check.

    Subclasses override ``get_cache_key()`` (returning None skips throttling). An instance
    serves one request, as in DRF. After ``allow_request()``, ``self.decision`` holds the
    :class:`django_fastcache.limiter.Decision` and ``wait()`` the seconds to wait (None when
    the request's cost can never fit the rate).
    """

    cache = default_cache
    timer = time.time
    cache_format = _DEFAULT_CACHE_FORMAT
    scope: str | None = None
    # None: read REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'] at use (so overridden settings
    # apply); a dict set on a subclass is used as in DRF.
    THROTTLE_RATES: dict[str, str | None] | None = None
    algorithm = "sliding_log"
    burst: int | None = None
    cost = 1
    failure_mode: str | None = None

    decision: limiter.Decision | None = None
    rate: str | None = None  # None: get_rate() reads it from THROTTLE_RATES[scope]

    def __init__(self) -> None:
        rate = self.rate
        if not rate:
            rate = self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(rate)

    def get_rate(self) -> str | None:
        if not getattr(self, "scope", None):
            raise ImproperlyConfigured(
                f"You must set either `.scope` or `.rate` for '{type(self).__name__}' throttle")
        rates = self.THROTTLE_RATES
        if rates is None:
            rates = api_settings.DEFAULT_THROTTLE_RATES
        try:
            return rates[self.scope]
        except KeyError:
            raise ImproperlyConfigured(
                f"No default throttle rate set for '{self.scope}' scope") from None

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        """``(num_requests, duration_seconds)`` as DRF; also builds ``self.policy``.
        Raises ``ImproperlyConfigured`` naming the scope and the rate."""
        if rate is None:
            self.policy = None
            return (None, None)
        found = _parsed(self, rate)
        self.policy = found[0]
        return found[1]

    def get_cost(self, request: Any, view: Any) -> int:
        """Units this request spends (default: the ``cost`` attribute)."""
        return self.cost

    def allow_request(self, request: Any, view: Any) -> bool:
        if _switch[0] is False:  # limiter.set_enabled(False) / limiter.disabled()
            return True
        if self.rate is None:
            return True
        self.key = key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.now = now = self.timer()
        # DRF's clock is `timer`: a store with a clock of its own (Redis TIME) keeps it
        # unless the class or instance overrides timer (as DRF's tests do).
        self.decision = decision = _check(self.cache, key, self.policy,
                                          self.get_cost(request, view),
                                          None if self.timer is _time else now,
                                          self.failure_mode)
        if _headers[0] if _headers else _headers_enabled():
            _record(request, decision)
        if decision[0]:  # allowed
            return self.throttle_success()
        return self.throttle_failure()

    def throttle_success(self) -> bool:
        return True

    def throttle_failure(self) -> bool:
        return False

    def wait(self) -> float | None:
        """Seconds until this request would be allowed (DRF turns it into Retry-After).

        With a ``history`` (set directly, or read after a check), DRF's own formula:
        the time left before the oldest entry leaves the window, spread over the requests
        still available (None when none is); else the store's exact wait."""
        d = self.__dict__
        if self.rate is None or self.num_requests is None:
            return None
        if "history" in d or self.decision is None:
            history = d.get("history") or []
            now = d["now"] if "now" in d else self.timer()
            if history:
                remaining_duration = self.duration - (now - history[-1])
            else:
                remaining_duration = self.duration
            available_requests = self.num_requests - len(history) + 1
            if available_requests <= 0:
                return None
            return remaining_duration / float(available_requests)
        return self.decision.retry_after

    def __getattr__(self, name: str) -> Any:
        # DRF's `history` (the times counted in the window, newest first), read from the
        # store only when asked for after a check: for a sliding log, exact on every store
        # (to the microsecond); for the algorithms that keep counts, one entry per unit
        # counted, each at the time the quota was last spent.
        if name == "history":
            d = self.__dict__
            if d.get("decision") is not None and "key" in d:
                history = _store_history(self.cache, d["key"], d["policy"], d.get("now"))
                d["history"] = history
                return history
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---------------------------------------------------------------- control API

    def _control_key(self, request: Any, view: Any, key: str | None) -> str | None:
        if key is not None:
            return key
        if request is None:
            raise TypeError("give a request (and view) or key=")
        return self.get_cache_key(request, view)

    def reset(self, request: Any = None, view: Any = None, *, key: str | None = None) -> None:
        """Forgets what one identity spent in this throttle's scope: the identity of
        ``request`` (as ``get_cache_key`` names it) or the cache ``key`` given, e.g.
        ``AnonRateThrottle().reset(key="throttle_anon_203.0.113.7")``."""
        key = self._control_key(request, view, key)
        if key is not None and self.rate is not None:
            limiter.reset(self.cache, key, self.policy)

    def peek(self, request: Any = None, view: Any = None, *,
             key: str | None = None) -> limiter.Decision | None:
        """The identity's state without counting: ``limit``, ``remaining``,
        ``reset_after`` (seconds until the quota is whole); None when not throttled."""
        key = self._control_key(request, view, key)
        if key is None or self.rate is None:
            return None
        return limiter.peek(self.cache, key, self.policy,
                            now=None if self.timer is _time else self.timer())

    def get_ident(self, request: Any) -> str | None:
        # DRF's semantics, read from META directly (request.headers builds a mapping).
        return limiter.get_ident(request, api_settings.NUM_PROXIES)


class AnonRateThrottle(SimpleRateThrottle):
    """Limits anonymous requests by client address; authenticated ones pass."""

    scope = "anon"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = request.user
        if user and user.is_authenticated:
            return None
        if self.cache_format is _DEFAULT_CACHE_FORMAT:  # the same text, without a dict
            return f"throttle_{self.scope}_{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class UserRateThrottle(SimpleRateThrottle):
    """Limits by user id when authenticated, by client address otherwise."""

    scope = "user"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = request.user
        ident = user.pk if user and user.is_authenticated else self.get_ident(request)
        return _cache_key(self, ident)


class ScopedRateThrottle(SimpleRateThrottle):
    """Limits per view ``throttle_scope`` (user id or client address within a scope);
    views without one are not throttled."""

    scope_attr = "throttle_scope"

    def __init__(self) -> None:
        # The rate depends on the view, known only in allow_request().
        pass

    def allow_request(self, request: Any, view: Any) -> bool:
        if not self._resolve(view):
            return True
        return super().allow_request(request, view)

    def _resolve(self, view: Any) -> bool:
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return False
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return True

    def reset(self, request: Any = None, view: Any = None, *, key: str | None = None) -> None:
        if self._resolve(view):
            super().reset(request, view, key=key)

    def peek(self, request: Any = None, view: Any = None, *,
             key: str | None = None) -> limiter.Decision | None:
        return super().peek(request, view, key=key) if self._resolve(view) else None

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        user = request.user
        ident = user.pk if user and user.is_authenticated else self.get_ident(request)
        return _cache_key(self, ident)


# (rate, algorithm, burst, scope) -> (policy, (num_requests, duration))
_policies: dict[tuple, tuple[limiter.Policy, tuple[int, int]]] = {}
_check = limiter._check
_switch = limiter._enabled_override
_time = time.time
_headers = limiter._headers
_headers_enabled = limiter.headers_enabled


def _store_history(cache: Any, key: str, policy: limiter.Policy, now: float | None) -> list:
    key = limiter._safe_key(key)
    store = limiter._store_for(cache)
    if store is None:
        store = limiter.LocalStore(limiter.local_limiter(), "throttle")
    return store.history(key, policy, now)


def _parsed(throttle: Any, rate: str) -> tuple[limiter.Policy, tuple[int, int]]:
    # Throttles are built per request: each configuration is parsed and validated once per
    # process. `throttle` is an instance or its class (the same attributes at __init__).
    key = (rate, throttle.algorithm, throttle.burst, throttle.scope)
    found = _policies.get(key)
    if found is None:
        name = throttle.__name__ if isinstance(throttle, type) else type(throttle).__name__
        where = f"throttle {name} (scope {throttle.scope!r}, rate {rate!r})"
        policy = limiter.make_policy(
            rate, throttle.algorithm, throttle.burst, name=throttle.scope or "default",
            where=where)
        found = _policies[key] = (policy, (policy.limit, policy.rate.period))
    return found


def _cache_key(throttle: SimpleRateThrottle, ident: Any) -> str:
    fmt = throttle.cache_format
    if fmt is _DEFAULT_CACHE_FORMAT:  # the same text, without a dict
        return f"throttle_{throttle.scope}_{ident}"
    return fmt % {"scope": throttle.scope, "ident": ident}


def _record(request: Any, decision: limiter.Decision) -> None:
    # Kept on the HttpRequest under DRF's Request so RateLimitMiddleware can send headers
    # (only done when HEADERS is on: nothing else reads it).
    http_request = getattr(request, "_request", request)
    try:
        http_request.__dict__.setdefault("_fastcache_ratelimit", []).append(decision)
    except AttributeError:  # not a request object (DRF's own tests pass {})
        pass


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


@checks.register(checks.Tags.caches)
def check_throttle_classes(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every imported throttle class of ours with a fixed rate or scope must have a valid
    rate and algorithm (DRF would only fail on the first request)."""
    errors = []
    rates = api_settings.DEFAULT_THROTTLE_RATES or {}
    for cls in [SimpleRateThrottle, *_all_subclasses(SimpleRateThrottle)]:
        if cls is ScopedRateThrottle or issubclass(cls, ScopedRateThrottle):
            continue
        # Only classes settings can name (module-level): classes made inside functions
        # (tests, factories) are not configuration.
        module = sys.modules.get(cls.__module__)
        if module is None or getattr(module, cls.__qualname__, None) is not cls:
            continue
        rate = cls.__dict__.get("rate", getattr(cls, "rate", None))
        if not rate:
            scope = getattr(cls, "scope", None)
            table = cls.THROTTLE_RATES if cls.THROTTLE_RATES is not None else rates
            if not scope or scope not in table:
                continue  # DRF reports a missing rate on first use; so do we
            rate = table[scope]
        if rate is None:
            continue
        try:
            limiter.make_policy(rate, cls.algorithm, cls.burst,
                                where=f"throttle {cls.__module__}.{cls.__qualname__} "
                                      f"(scope {getattr(cls, 'scope', None)!r})")
        except (ImproperlyConfigured, InvalidRate) as exc:
            errors.append(checks.Error(str(exc), id="fastcache.E106"))
    return errors
