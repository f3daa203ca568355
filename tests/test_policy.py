"""The circuit breaker and the failure policy: the state machine on a fake clock, then real
Redis servers that hang (SIGSTOP) or are stopped while a stream of calls goes on."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django_fastcache.errors import ConnectionInterrupted, FastCacheError
from django_fastcache.policy import CircuitBreaker, FailurePolicy, policy_from_options
from django_fastcache.redis_client import RedisClients
from redis_servers import RedisServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()


# --- the breaker -------------------------------------------------------------------------

def test_breaker_opens_after_threshold_consecutive_failures(clock):
    b = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, timer=clock)
    assert b.state == "closed" and b.allow()
    assert b.record_failure() is False
    assert b.record_failure() is False
    assert b.state == "closed" and b.allow()
    assert b.record_failure() is True
    assert b.state == "open"
    assert [b.allow() for _ in range(4)] == [False] * 4
    assert (b.failures, b.short_circuited, b.opens) == (3, 4, 1)


def test_breaker_success_resets_the_consecutive_count(clock):
    b = CircuitBreaker(failure_threshold=3, timer=clock)
    for _ in range(10):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state == "closed" and b.opens == 0 and b.failures == 20


def test_breaker_half_open_lets_one_trial_through_and_success_closes(clock):
    b = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, timer=clock)
    trip(b)
    clock.advance(0.999)
    assert b.state == "open" and not b.allow()
    clock.advance(0.001)
    assert b.state == "half_open"
    assert b.allow() is True  # the trial
    assert b.allow() is False and b.allow() is False  # others wait for its verdict
    assert b.record_success() is True
    assert b.state == "closed" and b.allow() and b.opens == 1
    # closed again: it takes a full threshold of failures to reopen
    b.record_failure()
    assert b.state == "closed"


def test_breaker_failed_trial_reopens_for_another_reset_timeout(clock):
    b = CircuitBreaker(failure_threshold=2, reset_timeout=1.0, timer=clock)
    trip(b)
    clock.advance(1.0)
    assert b.allow()
    assert b.record_failure() is False  # a re-open, not a new outage
    assert b.state == "open" and b.opens == 1
    clock.advance(0.5)
    assert not b.allow()
    clock.advance(0.5)
    assert b.state == "half_open" and b.allow()


def test_breaker_trial_that_never_reports_expires(clock):
    b = CircuitBreaker(failure_threshold=1, reset_timeout=2.0, timer=clock)
    b.record_failure()
    clock.advance(2.0)
    assert b.allow()  # this trial's caller vanishes without reporting
    clock.advance(1.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow()  # a new trial


def test_breaker_threshold_zero_never_opens(clock):
    b = CircuitBreaker(failure_threshold=0, timer=clock)
    for _ in range(100):
        b.record_failure()
    assert b.allow() and b.state == "closed" and b.opens == 0


def test_breaker_reset_closes(clock):
    b = CircuitBreaker(failure_threshold=1, timer=clock)
    b.record_failure()
    b.reset()
    assert b.state == "closed" and b.allow()


@pytest.mark.parametrize("kwargs", [
    {"failure_threshold": -1}, {"failure_threshold": 1.5}, {"reset_timeout": 0},
    {"reset_timeout": "1"},
])
def test_breaker_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CircuitBreaker(**kwargs)


def test_breaker_counts_exactly_under_threads(clock):
    b = CircuitBreaker(failure_threshold=10**9, timer=clock)

    def hammer():
        for _ in range(5000):
            b.record_failure()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.failures == 20000


def test_breaker_allow_on_closed_breaker_is_cheap():
    b = CircuitBreaker()
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        b.allow()
    per_call = (time.perf_counter() - start) / n
    # About 0.05 us here; the bound is loose for a loaded 2-core machine.
    assert per_call < 2e-6, per_call


# --- the policy, with fake calls ---------------------------------------------------------

class Calls:
    """A callable that raises the queued exceptions, then returns ``value``."""

    def __init__(self, *errors: BaseException, value: object = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.count = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def make_policy(clock, ignore=True, threshold=3, log_interval=10.0, logger=None):
    breaker = CircuitBreaker(failure_threshold=threshold, reset_timeout=1.0, timer=clock)
    return FailurePolicy(ignore, log_interval, logger, breaker=breaker, name="test")


def test_policy_returns_the_result_and_passes_arguments(clock):
    policy = make_policy(clock)
    assert policy.run(lambda a, b=0: a + b, 1, b=2) == 3
    assert policy.stats()["errors"] == 0


@pytest.mark.parametrize("error", [
    redis.exceptions.ConnectionError("refused"),
    redis.exceptions.TimeoutError("timed out"),
    redis.exceptions.BusyLoadingError("loading"),
    redis.exceptions.ReadOnlyError("readonly"),
    redis.exceptions.ClusterDownError("CLUSTERDOWN"),
    redis.exceptions.MasterDownError("MASTERDOWN"),
    redis.exceptions.TryAgainError("TRYAGAIN"),
    ConnectionResetError(104, "reset"),
    TimeoutError("socket"),
])
def test_policy_serves_redis_errors_as_the_default(clock, error):
    policy = make_policy(clock)
    assert policy.run(Calls(error), default="miss") == "miss"
    assert policy.errors == 1 and policy.breaker.failures == 1


def test_policy_counts_dropped_writes(clock):
    policy = make_policy(clock, threshold=2)
    err = redis.exceptions.ConnectionError
    assert policy.run(Calls(err()), write=True, default=False) is False
    assert policy.run(Calls(err()), default=None) is None  # a read: not a dropped write
    assert policy.run(Calls(err()), write=True) is None  # breaker open: dropped, not called
    assert policy.stats() == {
        "errors": 2, "dropped_writes": 2, "short_circuited": 1, "breaker_state": "open",
        "breaker_opens": 1, "breaker_failures": 2, "breaker_suspected": 0,
    }


def test_policy_does_not_call_while_open_and_recovers_with_a_trial(clock):
    policy = make_policy(clock, threshold=3)
    fn = Calls(*[redis.exceptions.ConnectionError()] * 3)
    for _ in range(3):
        assert policy.run(fn, default="d") == "d"
    assert policy.breaker.state == "open"
    for _ in range(50):
        assert policy.run(fn, default="d") == "d"
    assert fn.count == 3 and policy.short_circuited == 50
    clock.advance(1.0)
    assert policy.run(fn, default="d") == "ok"  # the trial succeeds
    assert policy.breaker.state == "closed" and fn.count == 4


def test_policy_other_errors_propagate_and_an_error_reply_counts_as_success(clock):
    policy = make_policy(clock, threshold=1)
    with pytest.raises(ValueError):
        policy.run(Calls(ValueError("bug")))
    assert policy.breaker.failures == 0
    policy.run(Calls(redis.exceptions.ConnectionError()))
    clock.advance(1.0)
    with pytest.raises(redis.exceptions.ResponseError):
        policy.run(Calls(redis.exceptions.ResponseError("WRONGTYPE")))
    assert policy.breaker.state == "closed"  # the server answered


def test_policy_full_pool_is_served_but_does_not_trip_the_breaker(clock):
    policy = make_policy(clock, threshold=1)
    fn = Calls(*[redis.exceptions.MaxConnectionsError("Too many connections")] * 5)
    for _ in range(5):
        assert policy.run(fn, default="d") == "d"
    assert policy.errors == 5 and policy.breaker.state == "closed" and fn.count == 5


def test_policy_raises_connection_interrupted_when_not_ignoring(clock):
    policy = make_policy(clock, ignore=False, threshold=2)
    original = redis.exceptions.ConnectionError("Connection refused")
    with pytest.raises(ConnectionInterrupted) as info:
        policy.run(Calls(original), default="never")
    assert info.value.__cause__ is original
    assert isinstance(info.value, FastCacheError) and isinstance(info.value, ConnectionError)
    with pytest.raises(ConnectionInterrupted):
        policy.run(Calls(redis.exceptions.ConnectionError("reset")))
    fn = Calls()
    with pytest.raises(ConnectionInterrupted, match="circuit breaker open"):
        policy.run(fn, write=True)
    assert fn.count == 0 and policy.dropped_writes == 0  # raised, so nothing silently dropped


def test_policy_log_lines_are_rate_limited_and_count_the_suppressed(clock, caplog):
    logger = logging.getLogger("fastcache-test-policy")
    policy = make_policy(clock, threshold=1000, log_interval=10.0, logger=logger)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(7):
            policy.run(Calls(redis.exceptions.ConnectionError("refused")))
            clock.advance(1.0)
        assert len(caplog.records) == 1
        assert "cache 'test'" in caplog.records[0].getMessage()
        assert "(ConnectionError: refused)" in caplog.records[0].getMessage()
        clock.advance(10.0)
        policy.run(Calls(redis.exceptions.ConnectionError("refused")), write=True)
    assert len(caplog.records) == 2
    message = caplog.records[1].getMessage()
    assert "write dropped" in message and "6 more errors" in message


def test_policy_logs_opening_and_closing_of_the_breaker(clock, caplog):
    logger = logging.getLogger("fastcache-test-policy2")
    policy = make_policy(clock, threshold=2, log_interval=1e9, logger=logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        policy.run(Calls(redis.exceptions.ConnectionError()))
        policy.run(Calls(redis.exceptions.ConnectionError()))
        clock.advance(1.0)
        policy.run(Calls())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert "circuit breaker opened" in messages[1]
    assert "circuit breaker closed" in messages[2]


def test_policy_arun_is_the_async_twin(clock):
    policy = make_policy(clock, threshold=2)
    calls = []

    async def fn(value):
        calls.append(value)
        if len(calls) <= 2:
            raise redis.exceptions.ConnectionError("down")
        return value

    async def main():
        assert await policy.arun(fn, 1, default="miss") == "miss"
        assert await policy.arun(fn, 2, default="miss", write=True) == "miss"
        assert await policy.arun(fn, 3, default="miss") == "miss"  # open: not called
        clock.advance(1.0)
        assert await policy.arun(fn, 4, default="miss") == 4

    asyncio.run(main())
    assert calls == [1, 2, 4] and policy.dropped_writes == 1
    strict = make_policy(clock, ignore=False)

    async def failing():
        raise redis.exceptions.TimeoutError("slow")

    with pytest.raises(ConnectionInterrupted):
        asyncio.run(strict.arun(failing))


def test_policy_from_options_reads_and_validates():
    policy = policy_from_options({
        "IGNORE_EXCEPTIONS": False, "ERROR_LOG_INTERVAL": 5, "CIRCUIT_BREAKER_THRESHOLD": 7,
        "CIRCUIT_BREAKER_RESET_TIMEOUT": 0.5,
    }, name="alias")
    assert policy.ignore_exceptions is False and policy.log_interval == 5.0
    assert policy.breaker.failure_threshold == 7 and policy.breaker.reset_timeout == 0.5
    assert policy.name == "alias"
    defaults = policy_from_options({})
    assert defaults.ignore_exceptions is True and defaults.breaker.failure_threshold == 5
    for name, value in [("IGNORE_EXCEPTIONS", "yes"), ("ERROR_LOG_INTERVAL", -1),
                        ("CIRCUIT_BREAKER_THRESHOLD", 2.5),
                        ("CIRCUIT_BREAKER_RESET_TIMEOUT", 0)]:
        with pytest.raises(ImproperlyConfigured, match=rf"OPTIONS\['{name}'\].*{value!r}"):
            policy_from_options({name: value})


# --- real servers --------------------------------------------------------------------------

SOCKET_TIMEOUT = 0.1
THRESHOLD = 3


def stream(policy, call, n):
    """Run ``n`` calls through the policy; per-call durations in seconds."""
    durations = []
    for _ in range(n):
        start = time.perf_counter()
        assert policy.run(call, "k", default="miss") == "miss"
        durations.append(time.perf_counter() - start)
    return durations


def median(durations):
    return sorted(durations)[len(durations) // 2]


def p99(durations):
    return sorted(durations)[int(len(durations) * 0.99)]


@pytest.mark.redis
@pytest.mark.parametrize("outage", ["paused", "stopped"])
def test_breaker_makes_a_dead_redis_cost_microseconds_and_recovers(outage, clock):
    with RedisServer() as server:
        clients = RedisClients(server.url, {
            "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT})
        policy = make_policy(clock, threshold=THRESHOLD)
        client = clients.client()
        client.set("k", b"v")
        assert policy.run(client.get, "k") == b"v"

        if outage == "paused":
            server.pause()
        else:
            server.stop()
        try:
            first = stream(policy, client.get, THRESHOLD)
            assert policy.breaker.state == "open"
            if outage == "paused":
                # A hung server: the first timeout trips the breaker half-open, the trial
                # right after it times out too and opens it; nothing else waits.
                assert policy.errors == 2 and policy.breaker.suspected == 1
                assert min(first[:2]) >= SOCKET_TIMEOUT * 0.9
                assert max(first[2:]) < SOCKET_TIMEOUT / 10
            else:  # refused: each failure costs microseconds; the threshold opens it
                assert policy.errors == THRESHOLD
            errors = policy.errors
            short = policy.short_circuited
            down = stream(policy, client.get, 2000)
            assert policy.errors == errors and policy.short_circuited == short + 2000
            # Observed on the 2-core dev machine: median 0.8 us, p99 5.5 us (the issue's
            # target is 1 ms p99). The bounds are about 10x looser.
            assert median(down) < 10e-6, median(down)
            assert p99(down) < 60e-6, p99(down)
        finally:
            if outage == "paused":
                server.resume()
            else:
                server.start()

        # Back: once reset_timeout has passed, the trial call reconnects and closes the
        # breaker; the same client object serves again.
        assert policy.run(client.get, "k", default="miss") == "miss"  # still open
        clock.advance(1.0)
        expected = b"v" if outage == "paused" else None  # a restarted server is empty
        assert policy.run(client.get, "k", default="miss") == expected
        assert policy.breaker.state == "closed"
        assert policy.run(client.set, "k", b"w") is True
        assert clients.client() is client and client.get("k") == b"w"
        clients.close()


@pytest.mark.redis
def test_breaker_with_asyncio_client_on_a_hung_server(clock):
    with RedisServer() as server:
        clients = RedisClients(server.url, {"SOCKET_TIMEOUT": SOCKET_TIMEOUT})
        policy = make_policy(clock, threshold=THRESHOLD)

        async def main():
            client = clients.async_client()
            await client.set("k", b"v")
            server.pause()
            try:
                for _ in range(THRESHOLD):
                    assert await policy.arun(client.get, "k", default="miss") == "miss"
                durations = []
                for _ in range(500):
                    start = time.perf_counter()
                    assert await policy.arun(client.get, "k", default="miss") == "miss"
                    durations.append(time.perf_counter() - start)
                assert median(durations) < 20e-6, median(durations)
                assert p99(durations) < 100e-6, p99(durations)
            finally:
                server.resume()
            clock.advance(1.0)
            assert await policy.arun(client.get, "k") == b"v"
            assert policy.breaker.state == "closed"
            assert clients.async_client() is client

        asyncio.run(main())
        clients.close()
