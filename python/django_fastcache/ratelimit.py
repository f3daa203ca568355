"""Rate limits for plain Django views: the ``ratelimit`` decorator (function and class-based
views, sync and async) and ``RateLimitMiddleware`` (per-path rules from settings), on the
same engine as the DRF throttles (:mod:`django_fastcache.limiter`). No DRF needed.

::

    @ratelimit(rate="5/m", key="ip", method="POST")
    def login(request): ...

    FASTCACHE_THROTTLE = {"RULES": [
        {"path": r"^/api/", "rate": "100/15m", "key": "user"},
    ]}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

from . import limiter

__all__ = ["ALL", "RateLimitMiddleware", "Rule", "compile_rules", "ratelimit"]

ALL = None  # every method


def _num_proxies() -> int | None:
    # Plain views have their own NUM_PROXIES; without one, DRF's setting (read from
    # settings, so DRF need not be installed) keeps both on one answer.
    from django.conf import settings

    value = limiter.throttle_setting("NUM_PROXIES")
    if value is None:
        value = (getattr(settings, "REST_FRAMEWORK", None) or {}).get("NUM_PROXIES")
    return value


def _key_ip(request: HttpRequest) -> str | None:
    return f"ip:{limiter.get_ident(request, _num_proxies())}"


def _key_user(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return _key_ip(request)


def _key_function(key: str | Callable[[HttpRequest], str | None], where: str) -> Callable:
    if callable(key):
        return key
    if key == "ip":
        return _key_ip
    if key in ("user", "user_or_ip"):
        return _key_user
    if isinstance(key, str) and key.startswith("header:") and len(key) > 7:
        meta_name = "HTTP_" + key[7:].upper().replace("-", "_")

        def _key_header(request: HttpRequest) -> str | None:
            # Requests without the header share one bucket rather than escape the limit.
            return f"h:{request.META.get(meta_name, '')}"

        return _key_header
    raise ImproperlyConfigured(
        f"{where}: key must be 'ip', 'user', 'header:<name>' or a callable, not {key!r}")


def _methods(method: str | Iterable[str] | None, where: str) -> frozenset[str] | None:
    if method is None:
        return None
    if isinstance(method, str):
        method = [method]
    try:
        return frozenset(m.upper() for m in method)
    except AttributeError:
        raise ImproperlyConfigured(f"{where}: method must be a string or a list of strings") from None


class Rule:
    """One rate limit: which requests (methods, key) and what policy. Immutable; shared
    by every request. ``cost`` is an int or ``callable(request) -> int``."""

    def __init__(self, *, rate: str, key: Any = "ip", method: Any = ALL,
                 algorithm: str = "sliding_log", burst: int | None = None, cost: Any = 1,
                 group: str, cache: str | None = None, failure_mode: str | None = None,
                 path: str | None = None, where: str) -> None:
        self.policy = limiter.make_policy(rate, algorithm, burst, name=group, where=where)
        self.key = _key_function(key, where)
        self.methods = _methods(method, where)
        if not callable(cost) and (not isinstance(cost, int) or cost < 1):
            raise ImproperlyConfigured(f"{where}: cost must be a positive int or a callable")
        if isinstance(cost, int) and cost > self.policy.rate.limit:
            raise ImproperlyConfigured(f"{where}: cost {cost} exceeds the limit of rate {rate!r}")
        self.cost = cost
        self.group = group
        self.cache_alias = cache or "default"
        if failure_mode is not None and failure_mode not in limiter.FAILURE_MODES:
            raise ImproperlyConfigured(
                f"{where}: failure_mode must be one of {limiter.FAILURE_MODES}")
        self.failure_mode = failure_mode
        self.path = re.compile(path) if path is not None else None

    def applies(self, request: HttpRequest) -> bool:
        return self.methods is None or request.method in self.methods

    def check(self, request: HttpRequest) -> limiter.Decision | None:
        """The decision for this request, or None when the rule does not apply to it."""
        if not self.applies(request):
            return None
        ident = self.key(request)
        if ident is None:
            return None
        cost = self.cost(request) if callable(self.cost) else self.cost
        decision = limiter.check(caches[self.cache_alias], f"rl_{self.group}_{ident}",
                                 self.policy, cost, failure_mode=self.failure_mode)
        try:
            request._fastcache_ratelimit.append(decision)
        except AttributeError:
            request._fastcache_ratelimit = [decision]
        return decision

    def needs_thread(self) -> bool:
        """Whether a check does network I/O (so async callers run it off the loop)."""
        return limiter.uses_redis(caches[self.cache_alias])


def too_many_requests(decisions: list[limiter.Decision]) -> HttpResponse:
    """The 429 response: Retry-After (whenever a wait can be named) and, if enabled, the
    RateLimit headers."""
    response = HttpResponse("Too Many Requests\n", status=429, content_type="text/plain")
    retry = limiter.retry_after_header(decisions)
    if retry is not None:
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


def ratelimit(rate: str, key: Any = "ip", method: Any = ALL, block: bool = True, *,
              algorithm: str = "sliding_log", burst: int | None = None, cost: Any = 1,
              group: str | None = None, cache: str | None = None,
              failure_mode: str | None = None) -> Callable:
    """Limits a view to ``rate`` per ``key`` ("ip", "user", "header:x-api-key" or a
    ``callable(request) -> str | None``; None exempts the request), for ``method``
    (a name, a list, or ``ALL``). Over the limit: a 429 with Retry-After when ``block``,
    else ``request.limited = True`` and the view runs. ``group`` (default: the view's
    dotted name) names the counter; views sharing a group share limits. Decorates view
    functions, async views, methods, and View classes (their ``dispatch``).

    Raises ``ImproperlyConfigured`` at decoration time for a bad rate, key or method.
    """

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
        def outcome(request: HttpRequest, decision: limiter.Decision | None) -> HttpResponse | None:
            if decision is None or decision.allowed:
                return None
            if block:
                return _add_headers(too_many_requests([decision]), request._fastcache_ratelimit)
            request.limited = True
            return None

        if iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                request, _ = _request_of(args)
                if rule.needs_thread():
                    decision = await sync_to_async(rule.check, thread_sensitive=False)(request)
                else:
                    decision = rule.check(request)
                denied = outcome(request, decision)
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


def compile_rules(rules: Any) -> list[Rule]:
    """``FASTCACHE_THROTTLE['RULES']`` as Rules; ImproperlyConfigured names the bad one."""
    if not isinstance(rules, (list, tuple)):
        raise ImproperlyConfigured("FASTCACHE_THROTTLE['RULES'] must be a list of dicts")
    compiled = []
    allowed = {"path", "rate", "key", "method", "algorithm", "burst", "cost", "name", "cache",
               "failure_mode"}
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
            raise ImproperlyConfigured(f"{where}: invalid path regex {spec['path']!r}: {exc}") from exc
        compiled.append(Rule(
            rate=spec["rate"], key=spec.get("key", "ip"), method=spec.get("method", ALL),
            algorithm=spec.get("algorithm", "sliding_log"), burst=spec.get("burst"),
            cost=spec.get("cost", 1), group=spec.get("name", f"rule{i}"),
            cache=spec.get("cache"), failure_mode=spec.get("failure_mode"),
            path=spec["path"], where=where))
    return compiled


class RateLimitMiddleware:
    """Applies ``FASTCACHE_THROTTLE['RULES']``: every rule whose ``path`` regex matches
    (``re.search`` on ``request.path_info``) and whose method applies is checked; any denial
    returns a 429 with Retry-After. With ``HEADERS`` on, it also sends the RateLimit headers
    for every decision taken on the request, including DRF throttles' and decorators'.
    Rules are validated when the middleware is built (server start)."""

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
        rules = self._matching(request)
        denials = [d for d in (r.check(request) for r in rules) if d is not None and not d.allowed]
        if denials:
            response = too_many_requests(denials)
        else:
            response = self.get_response(request)
        return _add_headers(response, getattr(request, "_fastcache_ratelimit", None))

    async def __acall__(self, request: HttpRequest) -> Any:
        rules = self._matching(request)
        decisions = []
        for rule in rules:
            if rule.needs_thread():
                decisions.append(await sync_to_async(rule.check, thread_sensitive=False)(request))
            else:
                decisions.append(rule.check(request))
        denials = [d for d in decisions if d is not None and not d.allowed]
        if denials:
            response = too_many_requests(denials)
        else:
            response = await self.get_response(request)
        return _add_headers(response, getattr(request, "_fastcache_ratelimit", None))
