"""Rate limits for plain Django views: the ``ratelimit`` decorator (function and class-based
views, sync and async), ``is_ratelimited`` / ``get_usage`` / ``reset`` for code, and
``RateLimitMiddleware`` (per-path rules from settings), on the same engine as the DRF
throttles (:mod:`django_fastcache.limiter`). No DRF needed. django-ratelimit's arguments
keep their meaning (``group``, ``key``, ``rate``, ``method``, ``block``).

::

    @ratelimit(rate="5/m;100/h", key="ip", method="POST")
    def login(request): ...

    FASTCACHE_THROTTLE = {"RULES": [
        {"path": r"^/api/", "rate": "100/15m", "key": "user"},
    ]}

``key="ip"`` is ``REMOTE_ADDR`` unless ``FASTCACHE_THROTTLE['TRUSTED_PROXIES']`` says how
many proxies append to X-Forwarded-For; an IPv6 client is counted by its /64 network
(``IPV6_PREFIX``). A denied request gets a 429 with Retry-After, or what
``FASTCACHE_THROTTLE['BLOCKED']`` (or the decorator's ``blocked``) names: a view
``view(request, exception)`` or an exception class to raise.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from . import limiter
from .errors import FastCacheError

__all__ = [
    "ALL",
    "UNSAFE",
    "RateLimitMiddleware",
    "Ratelimited",
    "Rule",
    "compile_rules",
    "get_usage",
    "is_ratelimited",
    "ratelimit",
    "reset",
]

ALL = None  # every method
UNSAFE = frozenset({"DELETE", "PATCH", "POST", "PUT"})


class Ratelimited(FastCacheError, PermissionDenied):
    """A request over its limit, raised when ``BLOCKED`` names no view (or names this
    class); ``decisions`` holds the checks taken, ``retry_after`` the seconds to wait."""

    def __init__(self, message: str = "rate limit exceeded",
                 decisions: list[limiter.Decision] | None = None) -> None:
        super().__init__(message)
        self.decisions = decisions or []
        retry = limiter.retry_after_header(self.decisions)
        self.retry_after = None if retry is None else int(retry)


# ------------------------------------------------------------------------------ keys

def _key_ip(group: str, request: HttpRequest) -> str | None:
    return limiter.client_ip(request, limiter.trusted_proxies(), limiter.ipv6_prefix())


def _key_user_or_ip(group: str, request: HttpRequest) -> str | None:
    # django-ratelimit's "user" counts every anonymous client in one bucket; here an
    # anonymous client is counted by address, so one cannot lock the others out.
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"u{user.pk}"
    return f"ip{_key_ip(group, request)}"


def _two_arguments(fn: Callable) -> bool:
    # django-ratelimit's callables take (group, request); ours once took (request).
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _as_group_request(fn: Callable) -> Callable[[str, HttpRequest], Any]:
    if _two_arguments(fn):
        return fn
    return lambda group, request: fn(request)


def _key_function(key: Any, where: str) -> Callable[[str, HttpRequest], Any]:
    if callable(key):
        return _as_group_request(key)
    if key == "ip":
        return _key_ip
    if key in ("user", "user_or_ip"):
        return _key_user_or_ip
    if isinstance(key, str) and ":" in key:
        kind, _, name = key.partition(":")
        if name and kind == "header":
            meta_name = "HTTP_" + name.upper().replace("-", "_")
            # Requests without the header share one bucket rather than escape the limit.
            return lambda group, request: request.META.get(meta_name, "")
        if name and kind == "get":
            return lambda group, request: request.GET.get(name, "")
        if name and kind == "post":
            return lambda group, request: request.POST.get(name, "")
    if isinstance(key, str) and "." in key:
        try:
            return _as_group_request(import_string(key))
        except ImportError as exc:
            raise ImproperlyConfigured(f"{where}: cannot import key {key!r}: {exc}") from exc
    raise ImproperlyConfigured(
        f"{where}: key must be 'ip', 'user', 'user_or_ip', 'header:<name>', 'get:<field>', "
        f"'post:<field>', a dotted path or a callable(group, request), not {key!r}")


def _methods(method: Any, where: str) -> frozenset[str] | None:
    if method is None:
        return None
    if isinstance(method, str):
        method = [method]
    try:
        return frozenset(m.upper() for m in method)
    except (AttributeError, TypeError):
        raise ImproperlyConfigured(
            f"{where}: method must be ALL, UNSAFE, a name or a list of names") from None


def _digest(value: str) -> str:
    # Client-chosen values (headers, fields) name Redis keys: long ones are replaced by a
    # fixed-size digest so a key's size never depends on what a client sends.
    if len(value) <= 64:
        return value
    return "#" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- rules

class Rule:
    """One rate limit: which requests (methods, key) and which policies (``rate`` holds
    one or several limits, ``"10/s;100/m"``, or is a ``callable(group, request)`` giving
    such a string, a ``(count, seconds)`` pair, or None for no limit). ``cost`` is an int
    or ``callable(request) -> int``. Immutable; shared by every request."""

    def __init__(self, *, rate: Any, key: Any = "ip", method: Any = ALL,
                 algorithm: str = "sliding_log", burst: int | None = None, cost: Any = 1,
                 group: str, cache: str | None = None, failure_mode: str | None = None,
                 path: str | None = None, where: str) -> None:
        self.algorithm = algorithm
        self.burst = burst
        self.group = group
        self.where = where
        self._rate_fn = None
        self._by_rate: dict[Any, tuple[limiter.Policy, ...]] = {}
        if rate is not None and not isinstance(rate, str) and callable(rate):
            self._rate_fn = _as_group_request(rate)
            self.policies: tuple[limiter.Policy, ...] = ()
        else:
            self.policies = self._parse(rate)
        self.key = _key_function(key, where)
        self.methods = _methods(method, where)
        if not callable(cost) and (not isinstance(cost, int) or cost < 1):
            raise ImproperlyConfigured(f"{where}: cost must be a positive int or a callable")
        for policy in self.policies:
            if isinstance(cost, int) and cost > policy.limit:
                raise ImproperlyConfigured(
                    f"{where}: cost {cost} exceeds the limit of rate {rate!r}")
        self.cost = cost
        self.cache_alias = cache or "default"
        if failure_mode is not None and failure_mode not in limiter.FAILURE_MODES:
            raise ImproperlyConfigured(
                f"{where}: failure_mode must be one of {limiter.FAILURE_MODES}")
        self.failure_mode = failure_mode
        self.path = re.compile(path) if path is not None else None

    @property
    def policy(self) -> limiter.Policy:
        """The first policy (rules with one rate)."""
        return self.policies[0]

    def _parse(self, rate: Any) -> tuple[limiter.Policy, ...]:
        if rate is None:
            return ()
        if isinstance(rate, tuple) and len(rate) == 2:
            count, seconds = rate
            parts: list[Any] = [limiter.Rate(int(count), int(seconds * 1_000_000))]
        elif isinstance(rate, str):
            parts = [p for p in (p.strip() for p in rate.split(";")) if p]
            if not parts:
                raise ImproperlyConfigured(f"{self.where}: empty rate {rate!r}")
        else:
            raise ImproperlyConfigured(
                f"{self.where}: rate must be a string like '10/s;100/m', a (count, seconds) "
                f"pair, None or a callable, not {rate!r}")
        return tuple(limiter.make_policy(p, self.algorithm, self.burst, name=self.group,
                                         where=self.where) for p in parts)

    def policies_for(self, request: HttpRequest) -> tuple[limiter.Policy, ...]:
        if self._rate_fn is None:
            return self.policies
        value = self._rate_fn(self.group, request)
        try:
            found = self._by_rate.get(value)
        except TypeError:  # unhashable: parse each time
            return self._parse(value)
        if found is None:
            if len(self._by_rate) > 256:
                self._by_rate.clear()
            found = self._by_rate[value] = self._parse(value)
        return found

    def applies(self, request: HttpRequest) -> bool:
        return self.methods is None or request.method in self.methods

    def _prepare(self, request: HttpRequest, check_method: bool = True) -> tuple | None:
        if check_method and not self.applies(request):
            return None
        policies = self.policies_for(request)
        if not policies:
            return None
        ident = self.key(self.group, request)
        if ident is None:
            return None
        ident = _digest(str(ident))
        cost = self.cost(request) if callable(self.cost) else self.cost
        cache = caches[self.cache_alias]
        return cache, [(self._counter(policy, ident), policy) for policy in policies], cost

    def _counter(self, policy: limiter.Policy, ident: str) -> str:
        return f"rl:{self.group}:{policy.limit}/{policy.period_us // 1_000_000}:{ident}"

    def check(self, request: HttpRequest, increment: bool = True,
              check_method: bool = True) -> list[limiter.Decision] | None:
        """The decisions for this request (one per policy), or None when the rule does
        not apply to it. ``increment=False`` peeks: nothing is counted."""
        prepared = self._prepare(request, check_method)
        if prepared is None:
            return None
        cache, counters, cost = prepared
        if increment:
            decisions = [limiter.check(cache, counter, policy, cost,
                                       failure_mode=self.failure_mode)
                         for counter, policy in counters]
            _remember(request, decisions)
        else:
            decisions = [limiter.peek(cache, counter, policy) for counter, policy in counters]
        return decisions

    async def acheck(self, request: HttpRequest) -> list[limiter.Decision] | None:
        """:meth:`check` on the event loop: Redis through ``redis.asyncio``."""
        prepared = self._prepare(request)
        if prepared is None:
            return None
        cache, counters, cost = prepared
        decisions = [await limiter.acheck(cache, counter, policy, cost,
                                          failure_mode=self.failure_mode)
                     for counter, policy in counters]
        _remember(request, decisions)
        return decisions

    def reset(self, request: HttpRequest) -> None:
        prepared = self._prepare(request, check_method=False)
        if prepared is not None:
            cache, counters, _ = prepared
            for counter, policy in counters:
                limiter.reset(cache, counter, policy)


def _remember(request: HttpRequest, decisions: list[limiter.Decision]) -> None:
    try:
        request._fastcache_ratelimit.extend(decisions)
    except AttributeError:
        request._fastcache_ratelimit = list(decisions)


def _denials(decisions: list[limiter.Decision] | None) -> list[limiter.Decision]:
    return [d for d in decisions or () if not d.allowed]


# -------------------------------------------------------------------------- responses

def too_many_requests(decisions: list[limiter.Decision]) -> HttpResponse:
    """The default 429 response: Retry-After whenever a wait can be named."""
    response = HttpResponse("Too Many Requests\n", status=429, content_type="text/plain")
    retry = limiter.retry_after_header(decisions)
    if retry is not None:
        response["Retry-After"] = retry
    return response


def _resolve_blocked(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise ImproperlyConfigured(f"{where}: cannot import {value!r}: {exc}") from exc
    if value is not None and not callable(value):
        raise ImproperlyConfigured(
            f"{where}: must be a view (request, exception) or an exception class, not {value!r}")
    return value


def blocked_response(request: HttpRequest, decisions: list[limiter.Decision],
                     blocked: Any = None) -> HttpResponse:
    """What a denied request gets: ``blocked`` (or ``FASTCACHE_THROTTLE['BLOCKED']``) as
    an exception class to raise or a view ``view(request, exception)``; else a 429."""
    if blocked is None:
        blocked = _resolve_blocked(limiter.throttle_setting("BLOCKED"),
                                   "FASTCACHE_THROTTLE['BLOCKED']")
    if blocked is None:
        return too_many_requests(decisions)
    if isinstance(blocked, type) and issubclass(blocked, BaseException):
        if issubclass(blocked, Ratelimited):
            raise blocked(decisions=decisions)
        raise blocked("rate limit exceeded")
    response = blocked(request, Ratelimited(decisions=decisions))
    retry = limiter.retry_after_header(decisions)
    if retry is not None and not response.has_header("Retry-After") and response.status_code == 429:
        response["Retry-After"] = retry
    return response


def _add_headers(response: HttpResponse, decisions: list[limiter.Decision]) -> HttpResponse:
    if decisions and limiter.headers_enabled():
        for name, value in limiter.ratelimit_headers(decisions).items():
            response[name] = value
    return response


def _request_of(args: tuple) -> tuple[HttpRequest, int]:
    # A view function gets the request first; a method (via method_decorator or directly)
    # after self.
    for i, arg in enumerate(args[:2]):
        if isinstance(arg, HttpRequest):
            return arg, i
    raise TypeError("ratelimit: the decorated view received no HttpRequest")


# -------------------------------------------------------------------------- decorator

def ratelimit(rate: Any = None, key: Any = "ip", method: Any = ALL, block: bool = True, *,
              group: str | None = None, algorithm: str = "sliding_log",
              burst: int | None = None, cost: Any = 1, cache: str | None = None,
              failure_mode: str | None = None, blocked: Any = None) -> Callable:
    """Limits a view to ``rate`` (``"5/m"``, several as ``"10/s;100/m"``, or a
    ``callable(group, request)`` returning one, a ``(count, seconds)`` pair or None for no
    limit) per ``key`` ("ip", "user", "user_or_ip", "header:<name>", "get:<field>",
    "post:<field>", a dotted path or a ``callable(group, request)``; a key of None exempts
    the request), for ``method`` (``ALL``, ``UNSAFE``, a name or a list). Over the limit:
    what ``blocked`` / ``FASTCACHE_THROTTLE['BLOCKED']`` names, else a 429 with
    Retry-After, when ``block``; else ``request.limited = True`` and the view runs.
    ``group`` (default: the view's dotted name) names the counters; views sharing a group
    share limits. Decorates view functions, async views, methods, and View classes.

    Raises ``ImproperlyConfigured`` at decoration time for a bad rate, key or method.
    """
    blocked_hook = _resolve_blocked(blocked, "ratelimit(blocked=...)")

    def decorate(view: Any) -> Any:
        name = group or f"{view.__module__}.{view.__qualname__}"
        rule = Rule(rate=rate, key=key, method=method, algorithm=algorithm, burst=burst,
                    cost=cost, group=name, cache=cache, failure_mode=failure_mode,
                    where=f"ratelimit on {view.__module__}.{view.__qualname__}")
        if isinstance(view, type):
            view.dispatch = decorate_with(rule, view.dispatch)
            return view
        return decorate_with(rule, view)

    def decorate_with(rule: Rule, view: Callable) -> Callable:
        def outcome(request: HttpRequest,
                    decisions: list[limiter.Decision] | None) -> HttpResponse | None:
            denied = _denials(decisions)
            if not denied:
                return None
            if block:
                return _add_headers(blocked_response(request, denied, blocked_hook),
                                    request._fastcache_ratelimit)
            request.limited = True
            return None

        if iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                request, _ = _request_of(args)
                denied = outcome(request, await rule.acheck(request))
                if denied is not None:
                    return denied
                return _add_headers(await view(*args, **kwargs),
                                    getattr(request, "_fastcache_ratelimit", None))

            return async_wrapper

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request, _ = _request_of(args)
            denied = outcome(request, rule.check(request))
            if denied is not None:
                return denied
            return _add_headers(view(*args, **kwargs),
                                getattr(request, "_fastcache_ratelimit", None))

        return wrapper

    return decorate


# --------------------------------------------------------------- the API for code

_rules: dict[tuple, Rule] = {}


def _rule_for(request: HttpRequest, group: str | None, fn: Any, key: Any, rate: Any,
              method: Any, algorithm: str, cache: str | None) -> Rule:
    if group is None:
        if fn is None:
            raise ImproperlyConfigured("is_ratelimited: give group= or fn=")
        fn = getattr(fn, "__wrapped__", fn)
        group = f"{fn.__module__}.{fn.__qualname__}"
    if key is None:
        raise ImproperlyConfigured("is_ratelimited: key= is required")
    memo = (group, key, rate, method if not isinstance(method, list) else tuple(method),
            algorithm, cache)
    try:
        rule = _rules.get(memo)
    except TypeError:  # an unhashable argument: build each time
        rule = None
        memo = None
    if rule is None:
        rule = Rule(rate=rate, key=key, method=method, algorithm=algorithm, group=group,
                    cache=cache, where=f"is_ratelimited(group={group!r})")
        if memo is not None:
            if len(_rules) > 1024:
                _rules.clear()
            _rules[memo] = rule
    return rule


def is_ratelimited(request: HttpRequest, group: str | None = None, fn: Any = None,
                   key: Any = None, rate: Any = None, method: Any = ALL,
                   increment: bool = False, *, algorithm: str = "sliding_log",
                   cache: str | None = None) -> bool:
    """django-ratelimit's ``is_ratelimited``: whether ``request`` is over ``rate`` in
    ``group`` (or ``fn``'s dotted name); counts the request only when ``increment``.
    Sets ``request.limited`` (it stays True once set). A method the rule does not cover
    is never limited."""
    rule = _rule_for(request, group, fn, key, rate, method, algorithm, cache)
    decisions = rule.check(request, increment=increment)
    limited = bool(_denials(decisions))
    request.limited = limited or getattr(request, "limited", False)
    return limited


def get_usage(request: HttpRequest, group: str | None = None, fn: Any = None,
              key: Any = None, rate: Any = None, method: Any = ALL,
              increment: bool = False, *, algorithm: str = "sliding_log",
              cache: str | None = None) -> dict[str, Any] | None:
    """The tightest limit's state (django-ratelimit's ``get_usage``): ``count`` spent,
    ``limit``, ``remaining``, ``should_limit``, ``time_left`` (seconds until the quota is
    whole). None when no limit applies (the method, a None key or rate)."""
    rule = _rule_for(request, group, fn, key, rate, method, algorithm, cache)
    decisions = rule.check(request, increment=increment)
    if not decisions:
        return None
    tightest = min(decisions, key=lambda d: (d.allowed, d.remaining))
    limit = tightest.policy.limit
    return {
        "count": limit - tightest.remaining,
        "limit": limit,
        "remaining": tightest.remaining,
        "should_limit": not tightest.allowed,
        "time_left": tightest.reset_after_us / 1_000_000,
    }


def reset(request: HttpRequest, group: str | None = None, fn: Any = None, key: Any = None,
          rate: Any = None, *, algorithm: str = "sliding_log", cache: str | None = None) -> None:
    """Forgets what the identity of ``request`` (per ``key``) spent in ``group`` under
    ``rate``, on every store (its Redis keys, its cache entries, this process's table)."""
    _rule_for(request, group, fn, key, rate, ALL, algorithm, cache).reset(request)


# ------------------------------------------------------------------------- middleware

def compile_rules(rules: Any) -> list[Rule]:
    """``FASTCACHE_THROTTLE['RULES']`` as Rules; ImproperlyConfigured names the bad one."""
    if not isinstance(rules, (list, tuple)):
        raise ImproperlyConfigured("FASTCACHE_THROTTLE['RULES'] must be a list of dicts")
    compiled = []
    allowed = {"path", "rate", "key", "method", "algorithm", "burst", "cost", "name", "group",
               "cache", "failure_mode"}
    for i, spec in enumerate(rules):
        where = f"FASTCACHE_THROTTLE['RULES'][{i}]"
        if not isinstance(spec, dict) or "rate" not in spec or "path" not in spec:
            raise ImproperlyConfigured(f"{where} must be a dict with at least 'path' and 'rate'")
        unknown = set(spec) - allowed
        if unknown:
            raise ImproperlyConfigured(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        try:
            re.compile(spec["path"])
        except (re.error, TypeError) as exc:
            raise ImproperlyConfigured(
                f"{where}: invalid path regex {spec['path']!r}: {exc}") from exc
        compiled.append(Rule(
            rate=spec["rate"], key=spec.get("key", "ip"), method=spec.get("method", ALL),
            algorithm=spec.get("algorithm", "sliding_log"), burst=spec.get("burst"),
            cost=spec.get("cost", 1), group=spec.get("group", spec.get("name", f"rule{i}")),
            cache=spec.get("cache"), failure_mode=spec.get("failure_mode"),
            path=spec["path"], where=where))
    return compiled


class RateLimitMiddleware:
    """Applies ``FASTCACHE_THROTTLE['RULES']``: every rule whose ``path`` regex matches
    (``re.search`` on ``request.path_info``) and whose method applies is checked; any denial
    gets the blocked response (``BLOCKED``, else a 429 with Retry-After). With ``HEADERS``
    on, it also sends the RateLimit headers for every decision taken on the request,
    including DRF throttles' and decorators'. Rules are validated when the middleware is
    built (server start). On ASGI, Redis is checked through ``redis.asyncio``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.rules = compile_rules(limiter.throttle_setting("RULES"))
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _matching(self, request: HttpRequest) -> list[Rule]:
        path = request.path_info
        return [r for r in self.rules if r.path.search(path)]

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        denials = []
        for rule in self._matching(request):
            denials.extend(_denials(rule.check(request)))
        if denials:
            response = blocked_response(request, denials)
        else:
            response = self.get_response(request)
        return _add_headers(response, getattr(request, "_fastcache_ratelimit", None))

    async def __acall__(self, request: HttpRequest) -> Any:
        denials = []
        for rule in self._matching(request):
            denials.extend(_denials(await rule.acheck(request)))
        if denials:
            response = blocked_response(request, denials)
        else:
            response = await self.get_response(request)
        return _add_headers(response, getattr(request, "_fastcache_ratelimit", None))
