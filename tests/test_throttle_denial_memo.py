"""Repeated denials answered in the process (``_denials.py``): only while Redis tracking
says the state behind them is unchanged. Each test attacks one way the state can change
behind the process's back: another client's DEL, FLUSHDB, the cache's clear(), a
reset(), the tracking connection killed, a fork, a hung server."""

from __future__ import annotations

import os
import time

import pytest
import redis
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django_fastcache import _denials, limiter
from django_fastcache.cache import FastCache
from django_redis.cache import RedisCache as DjangoRedisCache
from redis_servers import RedisServer

pytestmark = pytest.mark.redis

KINDS = ["fastcache-redis", "django-redis", "django-rediscache"]
ROUNDS = int(os.environ.get("MEMO_ROUNDS", "200"))


def build(kind: str, url: str, prefix: str = "memo"):
    params = {"KEY_PREFIX": prefix}
    if kind == "fastcache-redis":
        return FastCache(url, params)
    if kind == "django-redis":
        return DjangoRedisCache(url, params)
    return RedisCache(url, params)


def evalsha_calls(raw) -> int:
    return int(raw.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def wait_usable(memo, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not memo.store.usable:
        assert time.monotonic() < deadline, f"denial memo never came up: {memo.stats()}"
        time.sleep(0.01)


@pytest.fixture
def raw(clean_redis_server):
    client = redis.Redis.from_url(clean_redis_server.url)
    # On: django-redis and Django's RedisCache take it only when asked (their clear() is
    # a FLUSHDB the process hears of through the listener; see the last tests).
    with override_settings(FASTCACHE_THROTTLE={"DENIAL_MEMO": True}):
        yield client
    client.close()
    _denials.close_all()
    limiter._stores.clear()


def hold_denial(cache, key: str, policy, memo) -> None:
    """Spends the limit of ``key`` and checks on until the memo holds its denial (a fill
    is refused while the invalidation of the last allowed check's write is in flight)."""
    while limiter.check(cache, key, policy).allowed:
        pass
    rkey = limiter._store_for(cache).key(key, policy)
    deadline = time.monotonic() + 10
    while memo.get(rkey, 1, policy.limit, policy.burst) is None:
        assert time.monotonic() < deadline, memo.stats()
        assert not limiter.check(cache, key, policy).allowed


def denied_with_memo(cache, key: str, policy):
    """The store's memo, up and holding the denial of ``key``."""
    memo = limiter._store_for(cache).memo()
    assert memo is not None
    limiter.check(cache, key, policy)  # starts the listener
    wait_usable(memo)
    hold_denial(cache, key, policy, memo)
    return memo


@pytest.mark.parametrize("kind", KINDS)
def test_repeated_denials_are_answered_without_redis_and_stay_exact(kind, raw,
                                                                   clean_redis_server):
    cache = build(kind, clean_redis_server.url)
    policy = limiter.make_policy("3/m")
    denied_with_memo(cache, "client", policy)
    before = evalsha_calls(raw)
    decisions = [limiter.check(cache, "client", policy) for _ in range(200)]
    assert evalsha_calls(raw) - before == 0
    assert not any(d.allowed for d in decisions)
    assert all(d.source == "redis" and d.remaining == 0 for d in decisions)
    # The retry the process reports is Redis's own less the time since (it lets go
    # early, never late): a denied script call writes nothing, so it may be asked.
    mine = limiter.check(cache, "client", policy).retry_after
    truth = limiter._store_for(cache).hit("client", policy, 1)
    assert truth[0] == 0
    assert 0 < mine <= truth[2] / 1_000_000 + 0.5
    # Another identity is unaffected.
    assert limiter.check(cache, "other", policy).allowed


@pytest.mark.parametrize("kind,how", [("fastcache-redis", "cache.clear"),
                                      *[(kind, "reset") for kind in KINDS]])
def test_this_processs_reset_and_a_fastcache_clear_are_seen_by_the_very_next_check(
        kind, how, raw, clean_redis_server):
    """Rounds of: the limit spent and its denial held in the process, the state removed
    through our API, and at once a check: it must be allowed every time."""
    cache = build(kind, clean_redis_server.url)
    policy = limiter.make_policy("2/m")
    memo = denied_with_memo(cache, "c", policy)
    wrong = 0
    for _ in range(ROUNDS):
        hold_denial(cache, "c", policy, memo)
        if how == "cache.clear":
            cache.clear()
        else:
            limiter.reset(cache, "c", policy)
        if not limiter.check(cache, "c", policy).allowed:
            wrong += 1
    assert wrong == 0


@pytest.mark.parametrize("kind,how", [
    *[(kind, how) for kind in KINDS for how in ("del", "flushdb", "flushall")],
    ("django-redis", "cache.clear"), ("django-rediscache", "cache.clear")])
def test_a_change_made_by_another_client_is_seen_once_its_invalidation_arrives(
        kind, how, raw, clean_redis_server):
    """Another connection (as another process would, or django-redis's and Django's own
    FLUSHDB-based clear()) removes the state behind a held denial: the memo lets go of it
    within a bound (milliseconds expected, 1 s asserted), and the next check is allowed.
    Until then the client is refused, never let through."""
    cache = build(kind, clean_redis_server.url)
    policy = limiter.make_policy("2/m")
    memo = denied_with_memo(cache, "c", policy)
    rkey = limiter._store_for(cache).key("c", policy)
    worst = 0.0
    for _ in range(ROUNDS // 4):
        hold_denial(cache, "c", policy, memo)
        if how == "del":
            raw.delete(rkey)
        elif how == "flushdb":
            raw.flushdb()
        elif how == "flushall":
            raw.flushall()
        else:
            cache.clear()
        changed = time.monotonic()
        while memo.get(rkey, 1, policy.limit, policy.burst) is not None:
            assert time.monotonic() - changed < 1.0, memo.stats()
            time.sleep(0.0002)
        worst = max(worst, time.monotonic() - changed)
        assert limiter.check(cache, "c", policy).allowed
    assert memo.stats()["state"] == "up"
    print(f"{kind} {how}: worst {worst * 1000:.2f} ms until the memo let go")


def test_the_default_is_on_for_fastcache_only(clean_redis_server):
    assert limiter._store_for(build("fastcache-redis", clean_redis_server.url,
                                    "d1")).memo() is not None
    for kind in ("django-redis", "django-rediscache"):
        assert limiter._store_for(build(kind, clean_redis_server.url, "d2")).memo() is None
    with override_settings(FASTCACHE_THROTTLE={"DENIAL_MEMO": "yes"}):
        with pytest.raises(ImproperlyConfigured, match="DENIAL_MEMO"):
            limiter._store_for(build("django-redis", clean_redis_server.url, "d3")).memo()
        assert [e.id for e in limiter.check_throttle_settings()] == ["fastcache.E107"]
    _denials.close_all()
    limiter._stores.clear()


@pytest.mark.parametrize("kind", KINDS)
def test_a_denial_answers_only_the_limit_it_was_made_under(kind, raw, clean_redis_server):
    """Two throttles of one period and algorithm share a key (as they share DRF's
    history): the stricter one's denial must not refuse the looser one."""
    cache = build(kind, clean_redis_server.url)
    strict, loose = limiter.make_policy("3/m"), limiter.make_policy("5/m")
    memo = denied_with_memo(cache, "s", strict)
    assert limiter._store_for(cache).key("s", strict) == limiter._store_for(cache).key("s", loose)
    assert [limiter.check(cache, "s", loose).allowed for _ in range(3)] == [True, True, False]
    assert not limiter.check(cache, "s", strict).allowed
    assert memo.stats()["state"] == "up"


@pytest.mark.parametrize("kind", [*KINDS, "embedded"])
def test_identities_no_store_can_encode_get_exact_decisions_not_errors(kind, raw,
                                                                      clean_redis_server,
                                                                      caplog):
    """Lone surrogates (a JSON body's "\\udc80" in a custom get_ident) used to fail the
    Redis call, count as a Redis failure for the breaker, then raise in the fallback."""
    cache = (FastCache("memo-embedded", {}) if kind == "embedded"
             else build(kind, clean_redis_server.url))
    policy = limiter.make_policy("1/m")
    odd, other = "client-\udc80-\ud800", "client-\udc81-\ud800"
    assert [limiter.check(cache, odd, policy).allowed for _ in range(3)] == [True, False, False]
    assert limiter.check(cache, other, policy).allowed  # kept apart from `odd`
    assert limiter.peek(cache, odd, policy).remaining == 0
    limiter.reset(cache, odd, policy)
    assert limiter.check(cache, odd, policy).source != "failure-local"
    assert "unavailable" not in caplog.text
    breaker = getattr(cache, "breaker", None)
    if breaker is not None:
        assert breaker.allow()


def test_a_denial_is_never_kept_past_an_invalidation_that_raced_its_check(raw,
                                                                        clean_redis_server):
    """The fill is guarded by the token taken before EVALSHA was sent: an invalidation of
    the key between the send and the fill refuses it."""
    cache = build("django-redis", clean_redis_server.url)
    policy = limiter.make_policy("1/m")
    store = limiter._store_for(cache)
    memo = denied_with_memo(cache, "r", policy)
    rkey = store.key("r", policy)
    memo.forget()
    wait_usable(memo)
    token = memo.token(rkey)
    sent = time.monotonic()
    reply = store.hit("r", policy, 1)  # denied
    assert reply[0] == 0
    raw.delete(rkey)  # its invalidation lands before the fill
    time.sleep(0.05)
    deadline = time.monotonic() + 5
    while memo.store.listener_pending():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    memo.put(rkey, token, 1, policy.limit, policy.burst, reply[1], reply[2], reply[3],
             sent)
    assert memo.get(rkey, 1, policy.limit, policy.burst) is None
    assert limiter.check(cache, "r", policy).allowed


def test_with_the_tracking_connection_gone_every_check_asks_redis(raw, clean_redis_server):
    cache = build("django-redis", clean_redis_server.url)
    policy = limiter.make_policy("2/m")
    memo = denied_with_memo(cache, "k", policy)
    rkey = limiter._store_for(cache).key("k", policy)
    # Kill every other connection (the listener's among them), then change the state:
    # its invalidation can no longer reach the process.
    raw.execute_command("CLIENT", "KILL", "SKIPME", "yes")
    raw.delete(rkey)
    assert limiter.check(cache, "k", policy).allowed
    while limiter.check(cache, "k", policy).allowed:
        pass
    before = evalsha_calls(raw)
    if not memo.store.usable:  # while it reconnects, nothing is answered from memory
        limiter.check(cache, "k", policy)
        assert evalsha_calls(raw) > before
    wait_usable(memo)  # and it comes back by itself


def test_a_forked_child_starts_without_its_parents_denials(raw, clean_redis_server):
    cache = build("django-redis", clean_redis_server.url)
    policy = limiter.make_policy("2/m")
    denied_with_memo(cache, "f", policy)
    rkey = limiter._store_for(cache).key("f", policy)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first check asks Redis, which has forgotten the client
        code = 1
        try:
            child_raw = redis.Redis.from_url(clean_redis_server.url)
            child_raw.delete(rkey)  # no listener of the child's could have seen this
            code = 0 if limiter.check(cache, "f", policy).allowed else 3
        finally:
            os.write(write, bytes([code]))
            os._exit(0)
    os.close(write)
    status = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    assert status == b"\x00"
    # The parent's memo saw the child's DEL too.
    assert limiter.check(cache, "f", policy).allowed


def test_no_memo_where_it_cannot_hold(clean_redis_server):
    policy = limiter.make_policy("1/m")
    tls = redis.Redis(host="127.0.0.1", port=1, ssl=True)
    assert _denials.memo_for(tls, None, "fcrl") is None
    odd_key = lambda key, version=None: f"{key}#site"  # noqa: E731 - prefix not first
    plain = redis.Redis.from_url(clean_redis_server.url)
    assert _denials.memo_for(plain, odd_key, "fcrl") is None
    assert _denials.memo_for(plain, None, "fcrl") is not None
    with override_settings(FASTCACHE_THROTTLE={"DENIAL_MEMO": False}):
        cache = build("django-redis", clean_redis_server.url, prefix="off")
        assert limiter._store_for(cache).memo() is None
        before = evalsha_calls(plain)
        for _ in range(5):
            limiter.check(cache, "x", policy)
        assert evalsha_calls(plain) - before == 5
    # A throttle with its own clock passes `now`: every check asks Redis.
    cache = build("django-redis", clean_redis_server.url, prefix="timer")
    before = evalsha_calls(plain)
    for _ in range(5):
        limiter.check(cache, "x", policy, now=1000.0)
    assert evalsha_calls(plain) - before == 5
    _denials.close_all()
    limiter._stores.clear()


def test_a_hung_server_is_not_hidden_by_the_memo(raw, clean_redis_server):
    """Denials held in memory are answered while the server is stopped only as long as
    the listener's health check has not failed; then the breaker and the failure mode
    decide, as without the memo."""
    cache = build("fastcache-redis", clean_redis_server.url)
    policy = limiter.make_policy("1/m")
    memo = denied_with_memo(cache, "h", policy)
    pid = int(raw.info("server")["process_id"])
    os.kill(pid, 19)  # SIGSTOP
    try:
        deadline = time.monotonic() + 30
        while memo.store.usable:  # the listener's PING goes unanswered
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # Not answered from memory: the check goes to the breaker and the failure mode.
        assert limiter.check(cache, "h", policy).source != "redis"
    finally:
        os.kill(pid, 18)  # SIGCONT
    wait_usable(memo, 30)


@pytest.mark.parametrize("kind", ["fastcache-redis", "django-redis"])
def test_over_a_unix_socket_too(kind, raw, clean_redis_server):
    cache = build(kind, f"unix://{clean_redis_server.unix_path}?db=0", prefix="unix")
    policy = limiter.make_policy("2/m")
    memo = denied_with_memo(cache, "u", policy)
    assert memo.endpoint == ("", 0, clean_redis_server.unix_path)
    before = evalsha_calls(raw)
    assert not any(limiter.check(cache, "u", policy).allowed for _ in range(50))
    assert evalsha_calls(raw) == before
    raw.delete(limiter._store_for(cache).key("u", policy))
    deadline = time.monotonic() + 1
    while memo.get(limiter._store_for(cache).key("u", policy), 1, 2, policy.burst) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.0002)
    assert limiter.check(cache, "u", policy).allowed


def test_on_a_server_with_a_password():
    with RedisServer(password="s3cret pass") as server:
        with override_settings(FASTCACHE_THROTTLE={"DENIAL_MEMO": True}):
            cache = build("django-redis", server.url, prefix="auth")
            policy = limiter.make_policy("1/m")
            try:
                memo = denied_with_memo(cache, "p", policy)
                assert memo.stats()["state"] == "up"
                raw = redis.Redis.from_url(server.url)
                before = evalsha_calls(raw)
                assert not limiter.check(cache, "p", policy).allowed
                assert evalsha_calls(raw) == before
                raw.close()
            finally:
                _denials.close_all()
                limiter._stores.clear()


@pytest.mark.parametrize("kind", ["fastcache-redis", "django-redis"])
def test_a_server_killed_and_restarted_empty_forgets_every_denial(kind):
    """SIGKILL, then a new empty server on the same port: the state is gone, and no
    denial held from before may answer for it."""
    with RedisServer() as server:
        with override_settings(FASTCACHE_THROTTLE={"DENIAL_MEMO": True}):
            cache = build(kind, server.url, prefix="restart")
            policy = limiter.make_policy("1/m")
            try:
                memo = denied_with_memo(cache, "k", policy)
                server.kill()
                server.start()  # same port, no data
                deadline = time.monotonic() + 30
                while not limiter.check(cache, "k", policy).allowed:
                    # Refused only by the failure mode or the breaker while it reconnects,
                    # never from memory: the listener took the memo down with the link.
                    assert not memo.store.usable or memo.stats()["entries"] == 0
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            finally:
                _denials.close_all()
                limiter._stores.clear()
