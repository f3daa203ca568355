"""The rate-limiting engine shared by the DRF throttles (``throttling``) and the plain-Django
decorator and middleware (``ratelimit``): rate strings, policies, the in-process and the
Redis store, the Redis-down policy and the RateLimit headers. It imports no DRF.

Every check is one atomic operation: a call into the C++ limiter table of this process,
or one ``EVALSHA`` of a Lua script in Redis that reads the clock from Redis ``TIME``.

Settings (all optional), read lazily from ``settings.FASTCACHE_THROTTLE``::

    FASTCACHE_THROTTLE = {
        "FAILURE_MODE": "local",      # Redis unreachable: "open" | "closed" | "local"
        "LOCAL_MAX_BYTES": 64 << 20,  # memory bound of the in-process table
        "LOCAL_SHARDS": 16,
        "KEY_PREFIX": "fcrl",         # Redis key namespace
        "HEADERS": False,             # send RateLimit-Policy / RateLimit headers
        "NUM_PROXIES": None,          # plain-Django "ip" keys (DRF's NUM_PROXIES otherwise)
        "RULES": [],                  # RateLimitMiddleware's per-path rules
    }
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from importlib import resources
from typing import Any, NamedTuple

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from . import _core
from .errors import InvalidRate

__all__ = [
    "ALGORITHMS",
    "Decision",
    "FAILURE_MODES",
    "Policy",
    "Rate",
    "check",
    "get_ident",
    "local_limiter",
    "make_policy",
    "parse_rate",
    "ratelimit_headers",
    "throttle_setting",
]

logger = logging.getLogger("django_fastcache.throttling")

ALGORITHMS = {"sliding_log": 0, "gcra": 1, "sliding_window": 2, "fixed_window": 3}
FAILURE_MODES = ("open", "closed", "local")
_SHORT = {"sliding_log": "sl", "gcra": "gc", "sliding_window": "sw", "fixed_window": "fw"}

_DEFAULTS: dict[str, Any] = {
    "FAILURE_MODE": "local",
    "LOCAL_MAX_BYTES": 64 << 20,
    "LOCAL_SHARDS": 16,
    "KEY_PREFIX": "fcrl",
    "HEADERS": False,
    "NUM_PROXIES": None,
    "RULES": [],
}

# ---------------------------------------------------------------------------- rates

_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
}
# "<count>/[<multiplier>[-]]<unit>": DRF's "100/minute" plus "100/15m", "5/10s", "1/2-sec".
_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*(?:(\d+)\s*-?\s*)?([A-Za-z]+)\s*")


class Rate(NamedTuple):
    """``limit`` units per ``period_us`` microseconds."""

    limit: int
    period_us: int

    @property
    def period(self) -> int:
        """The period in whole seconds (DRF's ``duration``)."""
        return self.period_us // 1_000_000


def parse_rate(text: str) -> Rate:
    """Parses DRF's rate grammar extended with a multiplier; raises :class:`InvalidRate`."""
    if not isinstance(text, str):
        raise InvalidRate(f"rate must be a string like '100/minute', not {text!r}")
    m = _RATE_RE.fullmatch(text)
    if m is None:
        raise InvalidRate(f"invalid rate {text!r}: expected '<count>/<period>', e.g. '100/minute' or '100/15m'")
    count, mult, unit = m.groups()
    seconds = _UNITS.get(unit.lower())
    if seconds is None:
        raise InvalidRate(
            f"invalid rate {text!r}: unknown unit {unit!r} (use s, sec, second, m, min, "
            "minute, h, hour, d or day)"
        )
    period = seconds * int(mult or 1)
    limit = int(count)
    if period == 0:
        raise InvalidRate(f"invalid rate {text!r}: the period must not be zero")
    if period > 3650 * 86400:
        raise InvalidRate(f"invalid rate {text!r}: the period must be at most 10 years")
    if limit > (1 << 40) or limit * period * 1000 >= (1 << 52):
        raise InvalidRate(f"invalid rate {text!r}: the count is too large for the period")
    return Rate(limit, period * 1_000_000)


class Policy(NamedTuple):
    """A rate with its algorithm: what one check enforces. Build with :func:`make_policy`."""

    rate: Rate
    algorithm: str
    code: int  # the algorithm's number in the C++ limiter
    burst: int  # gcra only: units allowed at once; 0 means the limit
    name: str  # the RateLimit header's policy name (the scope)
    limit: int  # = rate.limit, flat for the hot path
    period_us: int  # = rate.period_us


def make_policy(rate: str | Rate, algorithm: str = "sliding_log", burst: int | None = None,
                *, name: str = "default", where: str = "") -> Policy:
    """Validates a rate and algorithm; raises ``ImproperlyConfigured`` naming ``where``."""
    context = f"{where}: " if where else ""
    try:
        parsed = rate if isinstance(rate, Rate) else parse_rate(rate)
    except InvalidRate as exc:
        raise ImproperlyConfigured(f"{context}{exc}") from exc
    if algorithm not in ALGORITHMS:
        raise ImproperlyConfigured(
            f"{context}unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}"
        )
    if burst is not None:
        if algorithm != "gcra":
            raise ImproperlyConfigured(f"{context}burst applies to the gcra algorithm only")
        if not isinstance(burst, int) or not 1 <= burst <= parsed.limit:
            raise ImproperlyConfigured(
                f"{context}burst must be an integer between 1 and the limit ({parsed.limit}), "
                f"not {burst!r}"
            )
    return Policy(parsed, algorithm, ALGORITHMS[algorithm], burst or 0, name, parsed.limit,
                  parsed.period_us)


# ------------------------------------------------------------------------- settings

def throttle_setting(name: str) -> Any:
    """One entry of ``settings.FASTCACHE_THROTTLE``, or its default."""
    conf = getattr(settings, "FASTCACHE_THROTTLE", None) or {}
    return conf.get(name, _DEFAULTS[name])


# HEADERS, read once until FASTCACHE_THROTTLE changes: the throttles ask on every request.
_headers: list[bool] = []


def headers_enabled() -> bool:
    """``FASTCACHE_THROTTLE['HEADERS']``: whether decisions are kept for RateLimit headers."""
    if not _headers:
        _headers.append(bool(throttle_setting("HEADERS")))
    return _headers[0]


def _failure_mode(override: str | None) -> str:
    mode = override or throttle_setting("FAILURE_MODE")
    if mode not in FAILURE_MODES:
        raise ImproperlyConfigured(
            f"FASTCACHE_THROTTLE['FAILURE_MODE'] must be one of {FAILURE_MODES}, not {mode!r}"
        )
    return mode


def get_ident(request: Any, num_proxies: int | None) -> str | None:
    """The client address, trusting exactly ``num_proxies`` proxies' X-Forwarded-For
    entries (DRF's ``get_ident`` semantics): with N proxies, the Nth address from the right
    is the client, so entries a client prepends cannot change its identity."""
    # A DRF Request forwards META to the HttpRequest it wraps through __getattr__, which
    # costs more than the rest of a local check: read it from the wrapped request.
    meta = getattr(request, "_request", request).META
    xff = meta.get("HTTP_X_FORWARDED_FOR")
    remote_addr = meta.get("REMOTE_ADDR")
    if num_proxies is not None:
        if num_proxies == 0 or xff is None:
            return remote_addr
        addrs = xff.split(",")
        return addrs[-min(num_proxies, len(addrs))].strip()
    return "".join(xff.split()) if xff else remote_addr


# --------------------------------------------------------------------------- stores

_local_lock = threading.Lock()
_local: Any = None
# The table's check(key, policy, cost, now) builtins, returning a Decision with source
# "local" / "failure-local"; set together with _local.
_local_check: Any = None
_failure_local_check: Any = None


def local_limiter() -> Any:
    """This process's limiter table (created on first use from the LOCAL_* settings)."""
    global _local, _local_check, _failure_local_check
    if _local is None:
        with _local_lock:
            if _local is None:
                max_bytes = throttle_setting("LOCAL_MAX_BYTES")
                shards = throttle_setting("LOCAL_SHARDS")
                try:
                    table = _core.get_limiter("throttle", max_bytes, shards)
                except (TypeError, ValueError) as exc:
                    raise ImproperlyConfigured(
                        f"FASTCACHE_THROTTLE LOCAL_MAX_BYTES={max_bytes!r} / "
                        f"LOCAL_SHARDS={shards!r}: {exc}"
                    ) from exc
                _local_check = table.checker(Decision, "local")
                _failure_local_check = table.checker(Decision, "failure-local")
                _local = table
    return _local


def _load_script(algorithm: str) -> tuple[str, str]:
    import hashlib

    folder = resources.files(__package__).joinpath("lua")
    # Every script starts from the same clock prologue, kept in one file.
    text = (folder.joinpath("_now.lua").read_text("utf-8")
            + folder.joinpath(f"{algorithm}.lua").read_text("utf-8"))
    return text, hashlib.sha1(text.encode()).hexdigest()


_SCRIPTS = {name: _load_script(name) for name in ALGORITHMS}
# The same scripts as the wire layer runs them; filled by the first RedisStore (the wire
# needs redis-py, which the in-process limiter does not).
_WIRE_SCRIPTS: dict[str, Any] = {}


class RedisStore:
    """Checks run by one ``EVALSHA`` in the Redis of a cache backend (``redis_client()``).

    The command goes through the package's wire layer (:mod:`.wire`): on a FastCache the
    cache's own wire (the same held connections, fork rules and retry policy as its cache
    operations), otherwise a wire over the client given. A ``NOSCRIPT`` reply (after
    ``SCRIPT FLUSH``, a restart or a failover) loads the script and retries once.

    Thread safety: safe (each thread uses its own connection).
    """

    def __init__(self, client: Any, breaker: Any, wire: Any = None) -> None:
        from .wire import Script, Wire

        if not _WIRE_SCRIPTS:
            _WIRE_SCRIPTS.update({name: Script(text) for name, (text, _sha) in _SCRIPTS.items()})
        self.client = client
        self.breaker = breaker
        self.prefix = throttle_setting("KEY_PREFIX")
        self.wire = wire if wire is not None else Wire.over(client)

    def key(self, key: str, policy: Policy) -> str:
        # The identity is the hash tag: every key of one identity lands in one cluster
        # slot. Braces inside it would end the tag early, so they are replaced.
        if "{" in key or "}" in key:
            key = key.replace("{", "(").replace("}", ")")
        return f"{self.prefix}:{{{key}}}:{_SHORT[policy.algorithm]}"

    def hit(self, key: str, policy: Policy, cost: int, now_us: int | None = None) -> list[int]:
        """Raw script reply ``[allowed, remaining, retry_after_us, reset_after_us]``.
        ``now_us`` replaces Redis TIME: for tests of the algorithm only."""
        args = [policy.limit, policy.period_us, policy.burst, cost]
        if now_us is not None:
            args.append(now_us)
        return self.wire.evalsha(_WIRE_SCRIPTS[policy.algorithm], [self.key(key, policy)], args)


_stores: dict[int, tuple[Any, RedisStore | None]] = {}


def _store_for(cache: Any) -> RedisStore | None:
    """The Redis store of ``cache``, or None for the in-process table. Memoized per cache
    object (a ``caches[...]`` proxy included) until CACHES or FASTCACHE_THROTTLE change."""
    found = _stores.get(id(cache))
    if found is not None and found[0] is cache:
        return found[1]
    store = None
    redis_client = getattr(cache, "redis_client", None) if cache is not None else None
    if redis_client is not None:
        client = redis_client()
        if client is not None:
            # A FastCache's own wire: one set of held connections for cache and limiter.
            wire = getattr(getattr(cache, "_tier", None), "wire", None)
            store = RedisStore(client, getattr(cache, "breaker", None), wire)
    _stores[id(cache)] = (cache, store)
    return store


def _reset_memo(*, setting: str, **kwargs: Any) -> None:
    global _local
    if setting in ("CACHES", "FASTCACHE_THROTTLE"):
        _stores.clear()
    if setting == "FASTCACHE_THROTTLE":
        _local = None  # the registry keeps the table; only the settings are re-read
        _headers.clear()


setting_changed.connect(_reset_memo)


def uses_redis(cache: Any) -> bool:
    """Whether checks against ``cache`` run in Redis (else: in this process)."""
    return _store_for(cache) is not None


# ------------------------------------------------------------------------- checking

class Decision(NamedTuple):
    """The outcome of one check. ``source``: "local", "redis", or "open"/"closed"/"local"
    prefixed with "failure-" when Redis was unreachable and the failure mode decided."""

    allowed: bool
    remaining: int
    retry_after_us: int  # -1: this cost never fits the policy
    reset_after_us: int
    policy: Policy
    source: str

    @property
    def retry_after(self) -> float | None:
        """Seconds until the same request would be allowed; 0.0 if allowed; None: never."""
        if self.allowed:
            return 0.0
        if self.retry_after_us < 0:
            return None
        return self.retry_after_us / 1_000_000


_last_warning = [0.0]


def _warn_redis_down(exc: BaseException, mode: str) -> None:
    # At most one line per 10 s: a dead Redis must not turn into a log flood.
    now = time.monotonic()
    if now - _last_warning[0] >= 10.0:
        _last_warning[0] = now
        logger.warning("rate limiter: Redis unavailable (%s: %s); failure mode %r",
                       type(exc).__name__, exc, mode)


def check(cache: Any, key: str, policy: Policy, cost: int = 1, *,
          now: float | None = None, failure_mode: str | None = None) -> Decision:
    """One atomic check of ``cost`` units against ``policy`` for ``key``.

    Runs in the Redis of ``cache`` when it has one (``redis_client()``), else in this
    process's table, where ``now`` (seconds, default ``time.time()``) is the clock. Never
    raises for Redis trouble: an open circuit breaker or a Redis error is decided by the
    failure mode without further I/O.
    """
    return _check(cache, key, policy, cost, now, failure_mode)


_tuple_new = tuple.__new__


def _check(cache: Any, key: str, policy: Policy, cost: int, now: float | None,
           failure_mode: str | None) -> Decision:
    # check() with positional arguments: the throttles' per-request path.
    found = _stores.get(id(cache))
    store = found[1] if found is not None and found[0] is cache else _store_for(cache)
    if store is None:
        if _local is None:
            local_limiter()
        return _local_check(key, policy, cost, time.time() if now is None else now)
    breaker = store.breaker
    if breaker is None or breaker.allow():
        try:
            allowed, remaining, retry, reset = store.hit(key, policy, cost)
        except Exception as exc:  # noqa: BLE001 - no Redis failure may reach the view
            if breaker is not None:
                breaker.record_failure(exc)
            return _on_failure(exc, key, policy, cost, now, failure_mode)
        if breaker is not None:
            breaker.record_success()
        return _tuple_new(Decision, (allowed == 1, remaining, retry, reset, policy, "redis"))
    return _on_failure(None, key, policy, cost, now, failure_mode)


def _local_check_failure(key: str, policy: Policy, cost: int, now: float | None) -> Decision:
    if _local is None:
        local_limiter()
    return _failure_local_check(key, policy, cost, time.time() if now is None else now)


def _on_failure(exc: BaseException | None, key: str, policy: Policy, cost: int,
                now: float | None, failure_mode: str | None) -> Decision:
    mode = _failure_mode(failure_mode)
    if exc is not None:
        _warn_redis_down(exc, mode)
    if mode == "local":
        return _local_check_failure(key, policy, cost, now)
    if mode == "open":
        return Decision(True, policy.rate.limit, 0, 0, policy, "failure-open")
    # Closed: nothing is known about the client; ask it to come back after a period, at
    # most a minute (the breaker usually probes Redis again well before that).
    retry = min(policy.rate.period_us, 60_000_000)
    return Decision(False, 0, retry, retry, policy, "failure-closed")


# -------------------------------------------------------------------------- headers

def _seconds(us: int) -> int:
    return max(0, math.ceil(us / 1_000_000))


def ratelimit_headers(decisions: list[Decision]) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers, the
    structured-field form) for the decisions taken on one request.

    ``RateLimit`` names the policy closest to its limit: ``r`` is the remaining quota and
    ``t`` the seconds until it grows again (the retry delay when r is 0, else until the
    quota is whole again).
    """
    if not decisions:
        return {}
    policies = []
    seen = set()
    for d in decisions:
        p = d.policy
        item = f'"{p.name}";q={p.rate.limit};w={p.rate.period}'
        if item not in seen:
            seen.add(item)
            policies.append(item)
    tightest = min(decisions, key=lambda d: (d.allowed, d.remaining))
    if tightest.allowed or tightest.retry_after_us < 0:
        t = _seconds(tightest.reset_after_us)
    else:
        t = _seconds(tightest.retry_after_us)
    return {
        "RateLimit-Policy": ", ".join(policies),
        "RateLimit": f'"{tightest.policy.name}";r={max(0, tightest.remaining)};t={t}',
    }


def retry_after_header(decisions: list[Decision]) -> str | None:
    """``Retry-After`` seconds for a 429: the longest wait among the denials."""
    waits = [d.retry_after for d in decisions if not d.allowed and d.retry_after is not None]
    if not waits:
        return None
    return str(max(1, math.ceil(max(waits))))


# --------------------------------------------------------------------- system check

@checks.register(checks.Tags.caches)
def check_throttle_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validates FASTCACHE_THROTTLE, its RULES, DRF's DEFAULT_THROTTLE_RATES and reports
    which configured throttles run per process."""
    errors: list[checks.CheckMessage] = []
    conf = getattr(settings, "FASTCACHE_THROTTLE", None) or {}
    if not isinstance(conf, dict):
        return [checks.Error("FASTCACHE_THROTTLE must be a dict", id="fastcache.E101")]
    unknown = sorted(set(conf) - set(_DEFAULTS))
    if unknown:
        errors.append(checks.Error(
            f"FASTCACHE_THROTTLE has unknown keys: {', '.join(unknown)}",
            hint=f"known keys: {', '.join(_DEFAULTS)}", id="fastcache.E102"))
    mode = conf.get("FAILURE_MODE", "local")
    if mode not in FAILURE_MODES:
        errors.append(checks.Error(
            f"FASTCACHE_THROTTLE['FAILURE_MODE'] must be one of {FAILURE_MODES}, not {mode!r}",
            id="fastcache.E103"))
    from .ratelimit import compile_rules

    try:
        compile_rules(conf.get("RULES", []))
    except ImproperlyConfigured as exc:
        errors.append(checks.Error(str(exc), id="fastcache.E104"))

    rest = getattr(settings, "REST_FRAMEWORK", None) or {}
    for scope, rate in (rest.get("DEFAULT_THROTTLE_RATES") or {}).items():
        if rate is None:
            continue
        try:
            parse_rate(rate)
        except InvalidRate as exc:
            errors.append(checks.Error(
                f"REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'][{scope!r}]: {exc}",
                id="fastcache.E105"))
    ours = [path for path in rest.get("DEFAULT_THROTTLE_CLASSES", ())
            if isinstance(path, str) and path.startswith("django_fastcache.")]
    if ours or conf.get("RULES"):
        from django.core.cache import caches

        try:
            per_process = not uses_redis(caches["default"])
        except Exception:  # noqa: BLE001 - a broken CACHES is reported by Django's own check
            per_process = False
        if per_process:
            errors.append(checks.Info(
                "Rate limits run in each process's own in-process table: the default cache "
                "is not a FastCache with a Redis LOCATION, so every worker process counts "
                "separately.",
                hint="Set a Redis LOCATION on the FastCache default cache (or the "
                     "throttle's cache) to share limits across processes.",
                id="fastcache.I101"))
    return errors
