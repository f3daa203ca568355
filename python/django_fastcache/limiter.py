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
        "KEY_PREFIX": "fcrl",         # the limiter's part of its Redis keys (after the
                                      # cache's own KEY_PREFIX and version)
        "HEADERS": False,             # send RateLimit-Policy / RateLimit headers
        "NUM_PROXIES": None,          # old name of TRUSTED_PROXIES
        "TRUSTED_PROXIES": None,      # plain-Django "ip": proxies that append to
                                      # X-Forwarded-For (None: REMOTE_ADDR only)
        "IPV6_PREFIX": 64,            # plain-Django "ip": IPv6 clients by /64 network
        "RULES": [],                  # RateLimitMiddleware's per-path rules
        "ENABLED": True,              # False: no limit applies (tests, incidents)
        "BLOCKED": None,              # plain-Django 429: a view or exception class path
        "DENIAL_MEMO": None,          # repeated denials answered in the process while
                                      # Redis tracking says nothing changed (_denials.py):
                                      # None: on FastCache; True: also on django-redis and
                                      # Django's RedisCache; False: off
    }
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import weakref
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
    "CacheStore",
    "Decision",
    "FAILURE_MODES",
    "LocalStore",
    "Policy",
    "Rate",
    "RedisStore",
    "acheck",
    "check",
    "clear_embedded",
    "clear_local",
    "disabled",
    "enabled",
    "get_ident",
    "local_limiter",
    "make_policy",
    "parse_rate",
    "peek",
    "ratelimit_headers",
    "reset",
    "set_enabled",
    "store_kind",
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
    "ENABLED": True,
    "TRUSTED_PROXIES": None,
    "IPV6_PREFIX": 64,
    "BLOCKED": None,
    "DENIAL_MEMO": None,
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
        raise InvalidRate(f"invalid rate {text!r}: expected '<count>/<period>', "
                          "e.g. '100/minute' or '100/15m'")
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


def trusted_proxies() -> int | None:
    """How many proxies in front of the site append to X-Forwarded-For, for the plain-
    Django ``ip`` key: ``FASTCACHE_THROTTLE['TRUSTED_PROXIES']`` (or its old name
    ``NUM_PROXIES``), else DRF's ``REST_FRAMEWORK['NUM_PROXIES']``; None: none (the
    client is ``REMOTE_ADDR``, whatever headers it sends)."""
    conf = getattr(settings, "FASTCACHE_THROTTLE", None) or {}
    value = conf.get("TRUSTED_PROXIES", conf.get("NUM_PROXIES"))
    if value is None:
        value = (getattr(settings, "REST_FRAMEWORK", None) or {}).get("NUM_PROXIES")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ImproperlyConfigured(
            f"FASTCACHE_THROTTLE['TRUSTED_PROXIES'] must be None or a non-negative int, "
            f"not {value!r}")
    return value


def ipv6_prefix() -> int:
    """``FASTCACHE_THROTTLE['IPV6_PREFIX']``: the IPv6 network length one client is
    counted by (a client usually holds a whole /64)."""
    value = throttle_setting("IPV6_PREFIX")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 128:
        raise ImproperlyConfigured(
            f"FASTCACHE_THROTTLE['IPV6_PREFIX'] must be an int from 1 to 128, not {value!r}")
    return value


def client_ip(request: Any, proxies: int | None, prefix: int = 64) -> str | None:
    """The client address a client cannot choose: ``REMOTE_ADDR`` unless ``proxies``
    proxies are trusted (then the ``proxies``-th X-Forwarded-For entry from the right,
    which those proxies wrote), an IPv6 address as its ``/prefix`` network (an IPv4-mapped
    one as the IPv4 address)."""
    meta = getattr(request, "_request", request).META
    addr = meta.get("REMOTE_ADDR")
    if proxies:
        xff = meta.get("HTTP_X_FORWARDED_FOR")
        if xff:
            addrs = xff.split(",")
            addr = addrs[-min(proxies, len(addrs))].strip()
    if not addr or ":" not in addr:
        return addr
    import ipaddress

    try:
        ip = ipaddress.IPv6Address(addr.split("%", 1)[0])
    except ValueError:
        return addr  # not an address (a misconfigured proxy): one bucket per text
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if prefix >= 128:
        return str(ip)
    network = ipaddress.IPv6Network((int(ip) >> (128 - prefix) << (128 - prefix), prefix))
    return str(network)


# --------------------------------------------------------------------------- stores
#
# Where a throttle's state lives follows its ``cache`` (see _store_for):
#   LocalStore  the embedded FastCache: a C++ table named after its LOCATION, cleared by
#               that cache's clear(); also the failure-mode table of the Redis stores.
#   RedisStore  a FastCache with a Redis LOCATION, django-redis, or Django's RedisCache:
#               one EVALSHA through that cache's own client, keys under its KEY_PREFIX and
#               version (make_key), so its clear() resets them.
#   CacheStore  any other Django cache (Memcached, database, file, LocMem): DRF's own
#               algorithm and key on that cache (sliding_log), or add/incr (fixed_window).

_local_lock = threading.Lock()
_local: Any = None
# The table's check(key, policy, cost, now) builtins, returning a Decision with source
# "local" / "failure-local"; set together with _local.
_local_check: Any = None
_failure_local_check: Any = None


def _table(name: str) -> Any:
    max_bytes = throttle_setting("LOCAL_MAX_BYTES")
    shards = throttle_setting("LOCAL_SHARDS")
    try:
        return _core.get_limiter(name, max_bytes, shards)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(
            f"FASTCACHE_THROTTLE LOCAL_MAX_BYTES={max_bytes!r} / LOCAL_SHARDS={shards!r}: {exc}"
        ) from exc


def local_limiter() -> Any:
    """This process's fallback table (the failure mode "local" of the Redis stores, and
    throttles whose ``cache`` is no cache at all), created on first use."""
    global _local, _local_check, _failure_local_check
    if _local is None:
        with _local_lock:
            if _local is None:
                table = _table("throttle")
                _local_check = table.checker(Decision, "local")
                _failure_local_check = table.checker(Decision, "failure-local")
                _local = table
    return _local


def _peek_cost(policy: Policy) -> int:
    # Adapter while a table or script has no peek of its own: every algorithm answers a
    # cost above the limit (and gcra's burst) with the current room and reset time, and
    # counts nothing (the C++ table and all four Lua scripts, one table of cases).
    return policy.limit + 1


def _peeked(reply: Any, policy: Policy, source: str) -> Decision:
    _, remaining, _, reset = reply[:4]
    remaining = max(0, int(remaining))
    # What a request of cost 1 would get: allowed while there is room; the wait is only
    # known once counted, so a full quota names its reset time.
    return Decision(remaining >= 1, remaining, 0 if remaining else int(reset), int(reset),
                    policy, source)


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


class LocalStore:
    """State in one C++ table of this process. Thread safe (the table is)."""

    kind = "local"

    def __init__(self, table: Any, name: str) -> None:
        self.table = table
        self.name = name
        self._check = table.checker(Decision, "local")

    def check(self, key: str, policy: Policy, cost: int, now: float | None,
              failure_mode: str | None) -> Decision:
        return self._check(key, policy, cost, time.time() if now is None else now)

    async def acheck(self, key: str, policy: Policy, cost: int, now: float | None,
                     failure_mode: str | None) -> Decision:
        return self.check(key, policy, cost, now, failure_mode)

    def peek(self, key: str, policy: Policy, now: float | None) -> Decision:
        now = time.time() if now is None else now
        peek = getattr(self.table, "peek", None)
        if peek is not None:
            # A table with a peek of its own: Limiter.peek(key, policy, now) as its
            # checker takes them, returning the decision fields (by name or position).
            found = peek(key, policy, now)
            if hasattr(found, "remaining"):
                found = (found.allowed, found.remaining, 0, found.reset_after_us)
            return _peeked(tuple(found), policy, "local")
        # ADAPTER until the table has a peek: a cost above the limit counts nothing.
        decision = self._check(key, policy, _peek_cost(policy), now)
        return _peeked(decision, policy, "local")

    def reset(self, key: str, policy: Policy | None = None) -> None:
        try:
            self.table.reset(key, policy)
        except TypeError:  # a table whose reset() takes the key only
            self.table.reset(key)

    def history(self, key: str, policy: Policy, now: float | None) -> list[float]:
        now = time.time() if now is None else now
        if policy.algorithm == "sliding_log":
            # The table's log keeps every entry's time (integer microseconds): exact.
            return self.table.history(key, policy, now)
        return _counted_history(self, key, policy, now)


def _counted_history(store: Any, key: str, policy: Policy, now: float) -> list[float]:
    """``history`` for the algorithms that keep counts, not times (gcra, the windows): one
    entry per unit counted, each at the time the quota was last spent (when the reset time
    names it). Its length is what DRF's wait() formula needs."""
    d = store.peek(key, policy, now)
    used = policy.limit - d.remaining
    if used <= 0:
        return []
    newest = now - (policy.period_us - d.reset_after_us) / 1_000_000
    return [newest] * used


def _denial_memo_setting(value: Any) -> bool | None:
    """``FASTCACHE_THROTTLE["DENIAL_MEMO"]``, validated."""
    if value not in (None, True, False):
        raise ImproperlyConfigured(
            f"FASTCACHE_THROTTLE['DENIAL_MEMO'] must be None, True or False, not {value!r}")
    return value


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# (algorithm, period_us) -> the end of a Redis key: "sl:60s", "gc:1500ms".
_SUFFIXES: dict[tuple[str, int], str] = {}
# Stands for any policy's suffix when reset() looks for an identity's keys.
_ANY = "\u241fany\u241f"


def _key_suffix(policy: Policy) -> str:
    """The part of a Redis key naming the state's algorithm and period: throttles that
    share an identity (a DRF scope) but differ in either keep apart, as in the in-process
    table. The limit is left out, also as there: like DRF's history, one state serves
    every limit of one period."""
    period_us = policy.period_us
    if period_us % 1_000_000 == 0:
        period = f"{period_us // 1_000_000}s"
    else:
        period = f"{period_us // 1000}ms"
    suffix = _SUFFIXES[(policy.algorithm, period_us)] = f"{_SHORT[policy.algorithm]}:{period}"
    return suffix


class RedisStore:
    """Checks run by one ``EVALSHA`` in the Redis of a cache backend (``redis_client()``).

    The command goes through the package's wire layer (:mod:`.wire`): on a FastCache the
    cache's own wire (the same held connections, fork rules and retry policy as its cache
    operations), otherwise a wire over the client given. A ``NOSCRIPT`` reply (after
    ``SCRIPT FLUSH``, a restart or a failover) loads the script and retries once.

    Keys are ``make_key("fcrl:{<key>}:<algorithm>:<period>")`` of the cache (its KEY_PREFIX
    and version; the identity is the Cluster hash tag; e.g. ``fcrl:{throttle_anon_1.2.3.4}:
    sl:60s``), so the cache's ``clear()`` resets them and sites sharing a Redis with
    different prefixes never share counters. Without a ``make_key`` (a bare client),
    ``<FASTCACHE_THROTTLE KEY_PREFIX>:{<key>}:<algorithm>:<period>``.

    Thread safety: safe (each thread uses its own connection).
    """

    kind = "redis"

    def __init__(self, client: Any, breaker: Any, make_key: Any = None,
                 async_client: Any = None, wire: Any = None, *, fastcache: bool = False) -> None:
        from redis.exceptions import NoScriptError

        from .wire import Script, Wire

        if not _WIRE_SCRIPTS:
            _WIRE_SCRIPTS.update({name: Script(text) for name, (text, _sha) in _SCRIPTS.items()})
        self.client = client
        self.breaker = breaker
        self.prefix = throttle_setting("KEY_PREFIX")
        self.wire = wire if wire is not None else Wire.over(client)
        self.make_key = make_key
        self._async_client = async_client
        self._noscript = NoScriptError
        self._fastcache = fastcache  # a FastCache's: its clear() forgets denials at once
        self._memo: Any = False  # False: not looked up yet; None: none for this store

    def memo(self) -> Any:
        """The :class:`~._denials.DenialMemo` of this store's server and key prefix, or
        None: where it cannot hold, or as ``FASTCACHE_THROTTLE["DENIAL_MEMO"]`` says (None,
        the default: on a FastCache only, whose ``clear()`` drops the memo at once; True:
        also on django-redis and Django's RedisCache, whose ``clear()`` (``FLUSHDB``) this
        process sees when its invalidation arrives; False: never)."""
        memo = self._memo
        if memo is False:
            from . import _denials

            memo = None
            setting = _denial_memo_setting(throttle_setting("DENIAL_MEMO"))
            wanted = self._fastcache if setting is None else setting
            if wanted and type(self) is RedisStore:
                try:
                    memo = _denials.memo_for(self.client, self.make_key, self.prefix)
                except Exception:  # noqa: BLE001 - an odd client: every check asks Redis
                    memo = None
            self._memo = memo
        return memo

    def key(self, key: str, policy: Policy) -> str:
        suffix = _SUFFIXES.get((policy.algorithm, policy.period_us))
        if suffix is None:
            suffix = _key_suffix(policy)
        return self._key(key, suffix)

    def _key(self, key: str, short: str) -> str:
        # The identity is the hash tag: every key of one identity lands in one cluster
        # slot. Braces inside it would end the tag early, so they are replaced.
        if "{" in key or "}" in key:
            key = key.replace("{", "(").replace("}", ")")
        if len(key) > 200:
            # A client-chosen identity (DRF's X-Forwarded-For with NUM_PROXIES=None, a
            # header) must not size Redis keys: long ones become a fixed-size digest.
            import hashlib

            digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16)
            key = f"{key[:64]}#{digest.hexdigest()}"
        if self.make_key is not None:
            return self.make_key(f"{self.prefix}:{{{key}}}:{short}")
        return f"{self.prefix}:{{{key}}}:{short}"

    def hit(self, key: str, policy: Policy, cost: int, now_us: int | None = None) -> list[int]:
        """Raw script reply ``[allowed, remaining, retry_after_us, reset_after_us]``.
        ``now_us`` replaces Redis TIME: for tests of the algorithm only."""
        args = [policy.limit, policy.period_us, policy.burst, cost]
        if now_us is not None:
            args.append(now_us)
        return self.wire.evalsha(_WIRE_SCRIPTS[policy.algorithm], [self.key(key, policy)], args)

    async def ahit(self, client: Any, key: str, policy: Policy, cost: int,
                   now_us: int | None = None) -> list[int]:
        """:meth:`hit` through a ``redis.asyncio`` client."""
        return await self._aeval(client, self.key(key, policy), policy, cost, now_us)

    async def _aeval(self, client: Any, rkey: str, policy: Policy, cost: int,
                     now_us: int | None) -> list[int]:
        text, sha = _SCRIPTS[policy.algorithm]
        args = [policy.limit, policy.period_us, policy.burst, cost]
        if now_us is not None:
            args.append(now_us)
        try:
            return await client.evalsha(sha, 1, rkey, *args)
        except self._noscript:
            await client.script_load(text)
            return await client.evalsha(sha, 1, rkey, *args)

    def check(self, key: str, policy: Policy, cost: int, now: float | None,
              failure_mode: str | None) -> Decision:
        breaker = self.breaker
        if breaker is None or breaker.allow():
            known, pending = self._recall(key, policy, cost, now)
            if known is not None:
                return known
            try:
                reply = self.hit(
                    key, policy, cost, None if now is None else round(now * 1_000_000))
            except Exception as exc:  # noqa: BLE001 - no Redis failure may reach the view
                if breaker is not None:
                    breaker.record_failure(exc)
                return _on_failure(exc, key, policy, cost, now, failure_mode)
            if breaker is not None:
                breaker.record_success()
            return self._decided(reply, policy, cost, pending)
        return _on_failure(None, key, policy, cost, now, failure_mode)

    async def acheck(self, key: str, policy: Policy, cost: int, now: float | None,
                     failure_mode: str | None) -> Decision:
        """:meth:`check` on the event loop through ``redis.asyncio`` (no thread hop)."""
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            return _on_failure(None, key, policy, cost, now, failure_mode)
        known, pending = self._recall(key, policy, cost, now)
        if known is not None:
            return known
        try:
            rkey = self.key(key, policy)
            client = self.async_client_for(rkey)
            if client is None:  # no asyncio twin for this client: a worker thread
                from asgiref.sync import sync_to_async

                return await sync_to_async(self.check, thread_sensitive=False)(
                    key, policy, cost, now, failure_mode)
            reply = await self._aeval(
                client, rkey, policy, cost, None if now is None else round(now * 1_000_000))
        except Exception as exc:  # noqa: BLE001 - no Redis failure may reach the view
            if breaker is not None:
                breaker.record_failure(exc)
            return _on_failure(exc, key, policy, cost, now, failure_mode)
        if breaker is not None:
            breaker.record_success()
        return self._decided(reply, policy, cost, pending)

    def _recall(self, key: str, policy: Policy, cost: int,
                now: float | None) -> tuple[Decision | None, tuple | None]:
        """Before a check's I/O: ``(decision, None)`` when the denial memo answers it;
        else ``(None, pending)``, ``pending`` being what :meth:`_decided` needs to keep a
        denial from the reply (None without a memo: a clock of the throttle's own, or
        none for this store)."""
        memo = self._memo if now is None else None
        if memo is False:
            memo = self.memo()
        if memo is None:
            return None, None
        try:
            rkey = self.key(key, policy)
            known = memo.get(rkey, cost, policy.limit, policy.burst)
            if known is not None:  # still denied, and Redis says nothing changed
                return _tuple_new(Decision, (False, *known, policy, "redis")), None
            return None, (memo, rkey, memo.token(rkey), time.monotonic())
        except Exception:  # noqa: BLE001 - a key it cannot hold: ask Redis
            return None, None

    @staticmethod
    def _decided(reply: Any, policy: Policy, cost: int, pending: tuple | None) -> Decision:
        """After a check's I/O: the decision of the script's ``reply``, a denial kept in
        the memo under the token taken before the I/O (:meth:`_recall`)."""
        allowed, remaining, retry, reset = reply
        if pending is not None and allowed != 1:
            memo, rkey, token, sent = pending
            memo.put(rkey, token, cost, policy.limit, policy.burst, remaining, retry, reset,
                     sent)
        return _tuple_new(Decision, (allowed == 1, remaining, retry, reset, policy, "redis"))

    def peek(self, key: str, policy: Policy, now: float | None) -> Decision:
        reply = self.hit(key, policy, _peek_cost(policy),
                         None if now is None else round(now * 1_000_000))
        return _peeked(reply, policy, "redis")

    def reset(self, key: str, policy: Policy | None = None) -> None:
        try:
            self._reset(key, policy)
        finally:
            memo = self._memo
            if memo:  # its listener would drop the entries too; this process sees it now
                memo.forget()

    def _reset(self, key: str, policy: Policy | None) -> None:
        if policy is not None:
            rkey = self.key(key, policy)
            self.client_for(rkey).delete(rkey)
            return
        # Every policy's state of the identity: its keys differ only after the hash tag,
        # so one SCAN pattern finds them all (on a cluster, on each primary; they sit in
        # the tag's one slot, so one DEL).
        from .redis_client import scan_keys

        made = self._key(key, _ANY)
        head, _, tail = made.rpartition(_ANY)
        pattern = f"{_glob_escape(head)}*{_glob_escape(tail)}"
        client = self.client_for(made)
        found = list(scan_keys(client, pattern, count=1000))
        if found:
            client.delete(*found)

    def history(self, key: str, policy: Policy, now: float | None) -> list[float]:
        if policy.algorithm != "sliding_log":
            return _counted_history(self, key, policy, time.time() if now is None else now)
        rkey = self.key(key, policy)
        client = self.client_for(rkey)
        entries = client.lrange(rkey, 0, -1)
        if now is None:  # Redis TIME is the clock: the window is the server's
            reply = client.time()
            seconds, micros = next(iter(reply.values())) if isinstance(reply, dict) else reply
            now_us = int(seconds) * 1_000_000 + int(micros)
        else:
            now_us = round(now * 1_000_000)
        horizon = now_us - policy.period_us
        return [int(t) / 1_000_000 for t in entries if int(t) > horizon]

    def client_for(self, rkey: str) -> Any:
        """The sync redis-py client that holds ``rkey`` (one client here; a shard of
        django-redis's ShardClient in :class:`_ShardedRedisStore`)."""
        return self.client

    def async_client_for(self, rkey: str) -> Any:
        """The ``redis.asyncio`` client of the running loop that holds ``rkey``; None when
        the sync client has no asyncio twin (the check then runs in a worker thread)."""
        return self._async_client() if self._async_client is not None else None


class _ShardedRedisStore(RedisStore):
    """:class:`RedisStore` over django-redis's ``ShardClient`` (client-side sharding over
    several servers): each key goes to the server ``ShardClient.get_server()`` names for
    it, as the cache's own commands do, through that server's wire (sync) or asyncio twin.
    The identity is the key's hash tag, which ShardClient hashes: one identity's keys
    share one server."""

    def __init__(self, shard_client: Any, make_key: Any) -> None:
        self.shards = shard_client
        self._per_server: dict[int, tuple[Any, Any]] = {}
        first = shard_client.get_server(make_key(""))
        super().__init__(first, None, make_key)

    def _server(self, rkey: str) -> tuple[Any, Any, Any]:
        client = self.shards.get_server(rkey)
        found = self._per_server.get(id(client))
        if found is None or found[0] is not client:
            from .wire import Wire

            found = self._per_server[id(client)] = (client, Wire.over(client),
                                                    _AsyncTwins(client))
        return found

    def hit(self, key: str, policy: Policy, cost: int, now_us: int | None = None) -> list[int]:
        rkey = self.key(key, policy)
        args = [policy.limit, policy.period_us, policy.burst, cost]
        if now_us is not None:
            args.append(now_us)
        return self._server(rkey)[1].evalsha(_WIRE_SCRIPTS[policy.algorithm], [rkey], args)

    def client_for(self, rkey: str) -> Any:
        return self._server(rkey)[0]

    def async_client_for(self, rkey: str) -> Any:
        return self._server(rkey)[2]()


class CacheStore:
    """State in any other Django cache, never weaker than DRF on the same cache: the
    sliding log is DRF's own (the history list of times under DRF's key, read, trimmed and
    written back: exact for sequential requests, shared wherever the cache is shared, a
    drop-in for a rolling deploy from DRF's classes; on a LocMemCache, under a lock, so
    exact); the fixed window counts with
    ``add`` + ``incr`` (atomic where the cache's incr is: Memcached, database, Redis).
    gcra and sliding_window need a FastCache or a Redis cache (on a LocMemCache, which is
    per process anyway, they run in this process's table)."""

    kind = "cache"

    def __init__(self, cache: Any) -> None:
        from django.core.cache.backends.locmem import LocMemCache

        self.cache = cache
        # A LocMemCache is seen by this process only: one lock per LOCATION makes DRF's
        # read-modify-write exact (DRF itself is not, under threads).
        self._lock = None
        backend = _unwrap(cache)
        if isinstance(backend, LocMemCache):
            with _local_lock:
                self._lock = _locmem_locks.setdefault(id(backend._cache), threading.Lock())

    def _unsupported(self, policy: Policy) -> ImproperlyConfigured:
        return ImproperlyConfigured(
            f"rate limit {policy.name!r}: algorithm {policy.algorithm!r} needs a FastCache "
            f"or a Redis cache; {type(self.cache).__name__} supports sliding_log and "
            "fixed_window")

    def _table(self, policy: Policy) -> LocalStore:
        # gcra and sliding_window keep state a Django cache cannot update atomically. A
        # LocMemCache is per process anyway: its LOCATION's table in this process serves.
        from django.core.cache.backends.locmem import LocMemCache

        backend = _unwrap(self.cache)
        if isinstance(backend, LocMemCache):
            # LocMemCache has no public name for its LOCATION; its private ``_cache`` is
            # the dict every instance of one LOCATION shares, the identity needed here.
            return _embedded_store(f"locmem:{id(backend._cache)}")
        raise self._unsupported(policy)

    def check(self, key: str, policy: Policy, cost: int, now: float | None,
              failure_mode: str | None) -> Decision:
        now = time.time() if now is None else now
        if policy.algorithm == "sliding_log":
            return self._sliding_log(key, policy, cost, now, count=True)
        if policy.algorithm == "fixed_window":
            return self._fixed_window(key, policy, cost, now, count=True)
        return self._table(policy).check(key, policy, cost, now, failure_mode)

    async def acheck(self, key: str, policy: Policy, cost: int, now: float | None,
                     failure_mode: str | None) -> Decision:
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.check, thread_sensitive=False)(
            key, policy, cost, now, failure_mode)

    def peek(self, key: str, policy: Policy, now: float | None) -> Decision:
        now = time.time() if now is None else now
        if policy.algorithm == "sliding_log":
            d = self._sliding_log(key, policy, _peek_cost(policy), now, count=False)
        elif policy.algorithm == "fixed_window":
            d = self._fixed_window(key, policy, _peek_cost(policy), now, count=False)
        else:
            return self._table(policy).peek(key, policy, now)
        return _peeked(d, policy, "cache")

    def reset(self, key: str, policy: Policy | None = None) -> None:
        self.cache.delete(key)
        if policy is not None and policy.algorithm in ("gcra", "sliding_window"):
            self._table(policy).reset(key, policy)
        if policy is None or policy.algorithm == "fixed_window":
            periods = [policy.period_us] if policy is not None else []
            for period_us in periods:
                start = int(time.time() * 1_000_000) // period_us * period_us
                self.cache.delete(f"{key}:fw:{period_us}:{start}")

    def history(self, key: str, policy: Policy, now: float | None) -> list[float]:
        now = time.time() if now is None else now
        if policy.algorithm != "sliding_log":
            return _counted_history(self, key, policy, now)
        history = self.cache.get(key, [])
        duration = policy.period_us / 1_000_000
        return [t for t in history if t > now - duration]

    def _sliding_log(self, key: str, policy: Policy, cost: int, now: float,
                     count: bool) -> Decision:
        if self._lock is not None:
            with self._lock:
                return self._sliding_log_step(key, policy, cost, now, count)
        return self._sliding_log_step(key, policy, cost, now, count)

    def _sliding_log_step(self, key: str, policy: Policy, cost: int, now: float,
                          count: bool) -> Decision:
        # DRF's SimpleRateThrottle step for step (its key, its list, its wait()).
        duration = policy.period_us / 1_000_000
        history = self.cache.get(key, [])
        while history and history[-1] <= now - duration:
            history.pop()
        total = len(history)
        reset = round((history[0] + duration - now) * 1_000_000) if history else 0
        if cost <= policy.limit and total + cost <= policy.limit:
            if count:
                history[0:0] = [now] * cost
                self.cache.set(key, history, duration)
            return Decision(True, policy.limit - total - cost, 0,
                            policy.period_us, policy, "cache")
        if cost > policy.limit:
            return Decision(False, policy.limit - total, -1, reset, policy, "cache")
        # DRF's wait(): the time left before the oldest entry leaves the window, spread
        # over the requests still available.
        remaining = duration - (now - history[-1]) if history else duration
        available = policy.limit - total + 1
        retry = -1 if available <= 0 else round(remaining / available * 1_000_000)
        return Decision(False, policy.limit - total, retry, reset, policy, "cache")

    def _fixed_window(self, key: str, policy: Policy, cost: int, now: float,
                      count: bool) -> Decision:
        now_us = round(now * 1_000_000)
        start = now_us // policy.period_us * policy.period_us
        left = start + policy.period_us - now_us
        wkey = f"{key}:fw:{policy.period_us}:{start}"
        if not count or cost > policy.limit:
            used = self.cache.get(wkey, 0)
            return Decision(False, policy.limit - used, -1, left if used else 0, policy, "cache")
        timeout = policy.period_us / 1_000_000 + 1
        self.cache.add(wkey, 0, timeout)
        try:
            used = self.cache.incr(wkey, cost)
        except ValueError:  # expired between add and incr
            self.cache.add(wkey, 0, timeout)
            used = self.cache.incr(wkey, cost)
        if used <= policy.limit:
            return Decision(True, policy.limit - used, 0, left, policy, "cache")
        self.cache.decr(wkey, cost)  # a denied request does not count
        return Decision(False, max(0, policy.limit - used + cost), left, left, policy, "cache")



_stores: dict[int, tuple[Any, Any]] = {}
_local_stores: dict[str, LocalStore] = {}
_locmem_locks: dict[int, threading.Lock] = {}


def _embedded_store(location: str) -> LocalStore:
    name = f"throttle:{location}"
    store = _local_stores.get(name)
    if store is None:
        with _local_lock:
            store = _local_stores.get(name)
            if store is None:
                store = _local_stores[name] = LocalStore(_table(name), name)
    return store


def clear_embedded(location: str) -> None:
    """Resets the limits kept for the embedded FastCache of ``location`` (its clear())."""
    store = _local_stores.get(f"throttle:{location}")
    if store is not None:
        store.table.clear()


def clear_local() -> None:
    """Resets every limit kept in this process's tables (the embedded FastCaches', the
    LocMemCaches' gcra and sliding_window state, the failure-mode table). For tests."""
    for store in list(_local_stores.values()):
        store.table.clear()
    if _local is not None:
        _local.clear()


# Connection settings a sync client's pool holds that mean the same to redis.asyncio.
_ASYNC_KWARGS = frozenset({
    "host", "port", "path", "db", "username", "password", "socket_timeout",
    "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options", "client_name",
    "encoding", "encoding_errors", "decode_responses", "health_check_interval",
    "retry_on_timeout", "protocol", "lib_name", "lib_version",
})


def _tls_kwargs(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The TLS options of a sync connection's ``kwargs`` for a ``redis.asyncio`` SSL
    connection: every option the asyncio class takes, set to the sync value or else to
    the sync class's default, so both sides verify alike whatever either library's
    defaults become. None when a sync-only option (OCSP) is in use: the asyncio
    connection could not check what the sync one does."""
    import inspect

    import redis
    import redis.asyncio

    sync = inspect.signature(redis.SSLConnection.__init__).parameters
    both = inspect.signature(redis.asyncio.SSLConnection.__init__).parameters
    out = {}
    for name, param in sync.items():
        if not name.startswith("ssl_"):
            continue
        value = kwargs.get(name, param.default)
        if name in both:
            out[name] = value
        elif value not in (None, False):
            return None
    return out


class _AsyncTwins:
    """A ``redis.asyncio`` client per event loop mirroring a sync redis-py client's
    connection settings (django-redis and Django's RedisCache have no asyncio client):
    TCP, Unix socket, TLS (the same ``ssl_*`` options) or a Sentinel-managed server (the
    same sentinels, service, role and options, through ``redis.asyncio.sentinel``).
    Calling it returns the running loop's client; None when the sync client is of another
    kind (a custom connection class, a sync-only TLS option): the check then runs in a
    worker thread."""

    def __init__(self, client: Any) -> None:
        self._make = _async_maker(client)
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._closers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self) -> Any:
        if self._make is None:
            return None
        import asyncio

        loop = asyncio.get_running_loop()
        made = self._loops.get(loop)
        if made is None:
            made = self._loops[loop] = self._make()
            # Kept alive by the loop; closed when asyncio.run() cancels leftover tasks.
            self._closers[loop] = loop.create_task(self._close_on_shutdown(loop, made))
        return made[0]

    async def _close_on_shutdown(self, loop: Any, made: tuple[Any, ...]) -> None:
        import asyncio

        try:
            await loop.create_future()
        except asyncio.CancelledError:
            if self._loops.get(loop) is made:
                del self._loops[loop]
            for client in made:  # the client, then any sentinel clients
                await client.aclose(close_connection_pool=True)
            raise


def _async_maker(client: Any) -> Any:
    """A function building ``(asyncio client, *helper clients to close)`` with ``client``'s
    settings on the running loop, or None (see :class:`_AsyncTwins`)."""
    import redis
    import redis.asyncio
    import redis.sentinel

    pool = getattr(client, "connection_pool", None)
    if not isinstance(client, redis.Redis) or pool is None:
        return None
    kwargs = dict(pool.connection_kwargs)
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return _async_sentinel_maker(pool, kwargs)
    conn_cls = {
        redis.Connection: redis.asyncio.Connection,
        redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
        redis.SSLConnection: redis.asyncio.SSLConnection,
    }.get(pool.connection_class)
    if conn_cls is None:
        return None
    common = {k: v for k, v in kwargs.items() if k in _ASYNC_KWARGS}
    if conn_cls is redis.asyncio.SSLConnection:
        tls = _tls_kwargs(kwargs)
        if tls is None:
            return None
        common.update(tls)

    def make() -> tuple[Any, ...]:
        return (redis.asyncio.Redis(connection_pool=redis.asyncio.ConnectionPool(
            connection_class=conn_cls, **common)),)

    return make


def _async_sentinel_maker(pool: Any, kwargs: dict[str, Any]) -> Any:
    import redis.asyncio
    import redis.asyncio.sentinel
    import redis.sentinel

    manager = pool.sentinel_manager
    addresses = []
    for sentinel in manager.sentinels:
        where = sentinel.connection_pool.connection_kwargs
        addresses.append((where["host"], where["port"]))
    tls = issubclass(pool.connection_class, redis.sentinel.SentinelManagedSSLConnection)
    # The data connections' settings; host and port are the sentinels' answer.
    common = {k: v for k, v in kwargs.items() if k in _ASYNC_KWARGS and k not in
              ("host", "port", "path")}
    if tls:
        tls_kwargs = _tls_kwargs(kwargs)
        if tls_kwargs is None:
            return None
        common.update(tls_kwargs)
    sentinel_kwargs = dict(manager.sentinel_kwargs or {})
    sentinel_tls = sentinel_kwargs.get("ssl", False)
    sentinel_kwargs = {k: v for k, v in sentinel_kwargs.items() if k in _ASYNC_KWARGS}
    if sentinel_tls:
        extra = _tls_kwargs(manager.sentinel_kwargs)
        if extra is None:
            return None
        sentinel_kwargs.update(extra, ssl=True)
    service, is_master, check = pool.service_name, pool.is_master, pool.check_connection
    min_others = manager.min_other_sentinels

    def make() -> tuple[Any, ...]:
        asentinel = redis.asyncio.sentinel.Sentinel(
            addresses, min_other_sentinels=min_others, sentinel_kwargs=sentinel_kwargs)
        role = asentinel.master_for if is_master else asentinel.slave_for
        primary = role(service, redis_class=redis.asyncio.Redis, ssl=tls,
                       check_connection=check, **common)
        return (primary, *asentinel.sentinels)

    return make


def django_rediscache_client(cache: Any) -> Any:
    """The redis-py client Django's ``RedisCache`` writes through.

    Django has no public route to it (4.2 to 5.2): ``RedisCache._cache`` (a cached
    property) is its ``RedisCacheClient``, whose ``get_client(key, write=True)`` returns the
    primary's ``redis.Redis``. This is the one place that reaches into Django's private
    attribute; if a Django release changes it, this raises naming the version rather than
    falling back silently (tests/test_throttle_stores.py pins the shape)."""
    import django

    inner = getattr(cache, "_cache", None)
    get_client = getattr(inner, "get_client", None)
    if get_client is None:
        raise ImproperlyConfigured(
            f"Django {django.get_version()}'s RedisCache no longer has the private "
            "`_cache.get_client()` that django-fastcache's throttles use to reach its Redis "
            "client; please report this (or use django-redis or FastCache meanwhile)")
    return get_client(None, write=True)


def _unwrap(cache: Any) -> Any:
    # django.core.cache.cache (DRF's default) is a proxy to this thread's default backend;
    # the proxy's alias is private, the default alias is public.
    from django.core.cache import DEFAULT_CACHE_ALIAS, caches
    from django.core.cache import cache as default_proxy

    if cache is default_proxy:
        return caches[DEFAULT_CACHE_ALIAS]
    return cache


def _store_of(cache: Any) -> Any:
    if cache is None:
        return None
    proxy, cache = cache, _unwrap(cache)
    redis_client = getattr(cache, "redis_client", None)
    if redis_client is not None:  # a FastCache (or its stand-in)
        client = redis_client()
        if client is None:
            location = getattr(cache, "_location", None)
            return _embedded_store(location) if isinstance(location, str) else None
        make_key = getattr(cache, "make_key", None)
        async_client = getattr(cache, "redis_async_client", None)
        # A FastCache's own wire: one set of held connections for cache and limiter.
        wire = getattr(getattr(cache, "_tier", None), "wire", None)
        return RedisStore(client, getattr(cache, "breaker", None), make_key, async_client, wire,
                          fastcache=True)
    module = type(cache).__module__
    if module.startswith("django_redis."):
        inner = getattr(cache, "client", None)
        if inner is not None and callable(getattr(inner, "get_server", None)):
            return _ShardedRedisStore(inner, cache.make_key)  # ShardClient
        if inner is not None:
            client = inner.get_client(write=True)
            return RedisStore(client, None, cache.make_key, _AsyncTwins(client))
    if module == "django.core.cache.backends.redis":
        client = django_rediscache_client(cache)
        return RedisStore(client, None, cache.make_key, _AsyncTwins(client))
    from django.core.cache.backends.dummy import DummyCache

    if isinstance(cache, DummyCache):
        return None  # it keeps nothing (DRF there never throttles): this process's table
    if all(hasattr(cache, name) for name in ("get", "set", "add", "incr", "delete")):
        return CacheStore(proxy)
    return None


def _store_for(cache: Any) -> Any:
    """The store of ``cache`` (LocalStore, RedisStore or CacheStore); None for the
    process-wide fallback table. Memoized per cache object (a ``caches[...]`` proxy
    included) until CACHES or FASTCACHE_THROTTLE change."""
    found = _stores.get(id(cache))
    if found is not None and found[0] is cache:
        return found[1]
    store = _store_of(cache)
    _stores[id(cache)] = (cache, store)
    return store


def _reset_memo(*, setting: str, **kwargs: Any) -> None:
    global _local
    if setting in ("CACHES", "FASTCACHE_THROTTLE"):
        _stores.clear()
    if setting == "FASTCACHE_THROTTLE":
        _local = None  # the registry keeps the tables; only the settings are re-read
        _headers.clear()
        _enabled.clear()


setting_changed.connect(_reset_memo)


def uses_redis(cache: Any) -> bool:
    """Whether checks against ``cache`` run in Redis (else: in this process or its cache)."""
    return isinstance(_store_for(cache), RedisStore)


def store_kind(cache: Any) -> str:
    """"redis" (exact, shared), "local" (exact, this process), or "cache" (DRF's
    algorithm on that cache: shared where it is, exact for sequential requests)."""
    store = _store_for(cache)
    return "local" if store is None else store.kind


# ------------------------------------------------------------------------- checking

class Decision(NamedTuple):
    """The outcome of one check. ``source``: "local", "redis", "cache", "disabled", or
    "open"/"closed"/"local" prefixed with "failure-" when Redis was unreachable and the
    failure mode decided."""

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

    @property
    def limit(self) -> int:
        return self.policy.limit

    @property
    def reset_after(self) -> float:
        """Seconds until the quota is whole again."""
        return self.reset_after_us / 1_000_000


# ENABLED, read once until FASTCACHE_THROTTLE changes; set_enabled() overrides it.
_enabled: list[bool] = []
_enabled_override: list[bool | None] = [None]


def enabled() -> bool:
    """Whether rate limiting is on (``FASTCACHE_THROTTLE['ENABLED']``, or the value given
    to :func:`set_enabled`)."""
    if _enabled_override[0] is not None:
        return _enabled_override[0]
    if not _enabled:
        _enabled.append(bool(throttle_setting("ENABLED")))
    return _enabled[0]


def set_enabled(value: bool | None) -> None:
    """Turns every limit of this process off (False) or on (True) at once, over the
    setting (None: follow ``FASTCACHE_THROTTLE['ENABLED']`` again). For incidents and
    tests; a disabled check counts nothing and allows."""
    _enabled_override[0] = None if value is None else bool(value)


class disabled:
    """``with limiter.disabled(): ...`` (or as a decorator): no limit applies inside."""

    def __enter__(self) -> disabled:
        self._before = _enabled_override[0]
        _enabled_override[0] = False
        return self

    def __exit__(self, *exc: Any) -> None:
        _enabled_override[0] = self._before

    def __call__(self, fn: Any) -> Any:
        import functools

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return wrapped


_last_warning = [0.0]


def _warn_redis_down(exc: BaseException, mode: str) -> None:
    # At most one line per 10 s: a dead Redis must not turn into a log flood.
    now = time.monotonic()
    if now - _last_warning[0] >= 10.0:
        _last_warning[0] = now
        logger.warning("rate limiter: Redis unavailable (%s: %s); failure mode %r",
                       type(exc).__name__, exc, mode)


def _safe_key(key: str) -> str:
    """``key``, or, when it is not valid UTF-8 text (lone surrogates, which JSON escapes
    such as ``"\\udc80"`` can carry into a custom identity), a readable form plus a digest
    that keeps such keys apart: no store can encode it, and a client must not turn it into
    a server error or a Redis failure that trips the circuit breaker."""
    if key.isascii():
        return key
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        import hashlib

        data = key.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return f"{data.decode('utf-8', 'replace')}#{digest}"


def check(cache: Any, key: str, policy: Policy, cost: int = 1, *,
          now: float | None = None, failure_mode: str | None = None) -> Decision:
    """One atomic check of ``cost`` units against ``policy`` for ``key`` in the store of
    ``cache`` (see :func:`store_kind`). ``now`` (seconds) replaces the store's clock
    (Redis ``TIME``, or ``time.time()``). Never raises for Redis trouble: an open circuit
    breaker or a Redis error is decided by the failure mode without further I/O."""
    return _check(cache, key, policy, cost, now, failure_mode)


async def acheck(cache: Any, key: str, policy: Policy, cost: int = 1, *,
                 now: float | None = None, failure_mode: str | None = None) -> Decision:
    """:func:`check` for async code: Redis through ``redis.asyncio`` on the running loop."""
    if not (_enabled[0] if _enabled and _enabled_override[0] is None else enabled()):
        return Decision(True, policy.limit, 0, 0, policy, "disabled")
    key = _safe_key(key)
    store = _store_for(cache)
    if store is None:
        return _fallback_check(key, policy, cost, now)
    return await store.acheck(key, policy, cost, now, failure_mode)


def peek(cache: Any, key: str, policy: Policy, *, now: float | None = None) -> Decision:
    """The state of ``key`` under ``policy`` without counting: ``remaining`` units,
    ``reset_after`` seconds until the quota is whole, ``allowed`` whether a request of
    cost 1 would pass now. Raises Redis errors (an operator call, not a request path)."""
    key = _safe_key(key)
    store = _store_for(cache)
    if store is None:
        local_limiter()
        return _peeked(_local_check(key, policy, _peek_cost(policy),
                                    time.time() if now is None else now), policy, "local")
    return store.peek(key, policy, now)


def reset(cache: Any, key: str, policy: Policy | None = None) -> None:
    """Forgets what ``key`` spent under ``policy`` (every algorithm's state when None) in
    the store of ``cache``, and in this process's failure-mode table."""
    key = _safe_key(key)
    store = _store_for(cache)
    if store is not None:
        store.reset(key, policy)
    if store is None or isinstance(store, RedisStore):
        LocalStore(local_limiter(), "throttle").reset(key, policy)


_tuple_new = tuple.__new__


def _fallback_check(key: str, policy: Policy, cost: int, now: float | None) -> Decision:
    if _local is None:
        local_limiter()
    return _local_check(key, policy, cost, time.time() if now is None else now)


def _check(cache: Any, key: str, policy: Policy, cost: int, now: float | None,
           failure_mode: str | None) -> Decision:
    # check() with positional arguments: the throttles' per-request path.
    if not (_enabled[0] if _enabled and _enabled_override[0] is None else enabled()):
        return Decision(True, policy.limit, 0, 0, policy, "disabled")
    if not key.isascii():
        key = _safe_key(key)
    found = _stores.get(id(cache))
    store = found[1] if found is not None and found[0] is cache else _store_for(cache)
    if store is None:
        return _fallback_check(key, policy, cost, now)
    return store.check(key, policy, cost, now, failure_mode)


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
    try:
        _denial_memo_setting(conf.get("DENIAL_MEMO"))
    except ImproperlyConfigured as exc:
        errors.append(checks.Error(str(exc), id="fastcache.E107"))
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
        from django.core.cache.backends.locmem import LocMemCache

        try:
            cache = caches["default"]
            kind = store_kind(cache)
        except Exception:  # noqa: BLE001 - a broken CACHES is reported by Django's own check
            kind = cache = None
        if kind == "local" or isinstance(cache, LocMemCache):
            errors.append(checks.Info(
                "Rate limits run in each process: the default cache is "
                f"{type(cache).__name__} (per process), so every worker process counts "
                "separately (exact within a process).",
                hint="Use a Redis cache as the default cache (FastCache with a Redis "
                     "LOCATION, django-redis or Django's RedisCache), or give the "
                     "throttles one, to share exact limits across processes.",
                id="fastcache.I101"))
        elif kind == "cache":
            errors.append(checks.Info(
                f"Rate limits on the default cache ({type(cache).__module__}."
                f"{type(cache).__qualname__}) run DRF's algorithm on it: shared by every "
                "process, exact for sequential requests, but concurrent requests of one "
                "client may exceed the limit (as with DRF); gcra and sliding_window are "
                "not available on it.",
                hint="A Redis cache (FastCache with a Redis LOCATION, django-redis or "
                     "Django's RedisCache) makes every check one atomic Lua script.",
                id="fastcache.I102"))
    return errors
