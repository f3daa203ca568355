"""Shared helpers of the throttling tests: the plain-Python reference model of each limiter
algorithm, and a fake cache exposing FastCache's Redis interface around a real redis.Redis.

The model is written independently of the C++/Lua formulas: it keeps whole histories, and
finds retry and reset instants by searching for the first instant at which a hypothetical
check would pass, instead of computing them in closed form.
"""

from __future__ import annotations

import math
import time

ALGORITHMS = ("sliding_log", "gcra", "sliding_window", "fixed_window")
CODES = {"sliding_log": 0, "gcra": 1, "sliding_window": 2, "fixed_window": 3}


class Model:
    """One key's limiter state for one policy; ``hit()`` returns the same 4-tuple as the
    C++ and Lua implementations: (allowed, remaining, retry_after_us, reset_after_us)."""

    def __init__(self, algorithm: str, limit: int, period_us: int, burst: int = 0) -> None:
        self.algorithm = algorithm
        self.limit = limit
        self.period = period_us
        self.burst = burst or limit
        self.log: list[tuple[int, int]] = []  # sliding_log: (time, cost)
        self.tat = 0  # gcra
        self.windows: dict[int, int] = {}  # fixed/sliding window: index -> units

    # -- the definition of each algorithm: may `k` units pass at `t`?
    def fits(self, t: int, k: int) -> bool:
        a, n, p = self.algorithm, self.limit, self.period
        if a == "sliding_log":
            return sum(c for at, c in self.log if at > t - p) + k <= n
        if a == "fixed_window":
            return self.windows.get(t // p, 0) + k <= n
        if a == "sliding_window":
            idx, pm = t // p, p // 1000
            elapsed_ms = (t - idx * p) // 1000
            prev, cur = self.windows.get(idx - 1, 0), self.windows.get(idx, 0)
            # estimate = prev * (pm - elapsed) / pm + cur, compared exactly
            return prev * (pm - elapsed_ms) + (cur + k) * pm <= n * pm
        if a == "gcra":
            t_unit = -(-p // n)  # the emission interval, rounded up to a whole microsecond
            return max(self.tat, t) + k * t_unit - self.burst * t_unit <= t
        raise AssertionError(a)

    def record(self, t: int, k: int) -> None:
        if self.algorithm == "sliding_log":
            self.log.append((t, k))
            self.log = [(at, c) for at, c in self.log if at > t - self.period]
        elif self.algorithm == "gcra":
            self.tat = max(self.tat, t) + k * -(-self.period // self.limit)
        else:
            idx = t // self.period
            self.windows = {i: c for i, c in self.windows.items() if i >= idx - 1}
            self.windows[idx] = self.windows.get(idx, 0) + k

    def capacity(self) -> int:
        return self.burst if self.algorithm == "gcra" else self.limit

    def room(self, t: int) -> int:
        k = 0
        while k < self.capacity() and self.fits(t, k + 1):
            k += 1
        return k

    def first(self, now: int, pred) -> int:
        """The first instant >= now where pred holds (pred is monotone), or -1."""
        hi = now + 3 * self.period
        if not pred(hi):
            return -1
        lo = now
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo - now

    def hit(self, now: int, cost: int) -> tuple[int, int, int, int]:
        if self.fits(now, cost):
            self.record(now, cost)
            allowed, retry = 1, 0
        else:
            allowed = 0
            retry = self.first(now, lambda t: self.fits(t, cost))
            assert retry != 0
        full = self.capacity()
        reset = self.first(now, lambda t: self.room(t) == full)
        return (allowed, self.room(now), retry, reset)


class FakeBreaker:
    """A minimal circuit breaker with FastCache's interface: opens after `threshold`
    consecutive failures and stays open (the tests close it explicitly)."""

    def __init__(self, threshold: int = 2) -> None:
        self.threshold = threshold
        self.failures = 0
        self.successes = 0

    def allow(self) -> bool:
        return self.failures < self.threshold

    def record_success(self) -> None:
        self.successes += 1
        self.failures = 0

    def record_failure(self, exc: BaseException | None = None) -> None:
        self.failures += 1


class FakeRedisCache:
    """Stands in for a FastCache with a Redis LOCATION: ``redis_client()`` and ``breaker``."""

    def __init__(self, client, breaker=None) -> None:
        self.client = client
        self.breaker = breaker

    def redis_client(self):
        return self.client


class FakeEmbeddedCache:
    """A FastCache without LOCATION: ``redis_client()`` is None."""

    breaker = None

    def redis_client(self):
        return None


def redis_client(url: str, socket_timeout: float = 2.0):
    import redis

    return redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                socket_connect_timeout=socket_timeout)


def ceil_seconds(us: int) -> int:
    return math.ceil(us / 1_000_000)


def now_us() -> int:
    return time.time_ns() // 1000


def reset_limits() -> None:
    """Forgets every limit the tests may have spent: the default cache's (its clear(), as
    DRF's tests do) and this process's fallback table."""
    from django.core.cache import caches
    from django_fastcache import limiter

    caches["default"].clear()
    limiter.clear_local()
