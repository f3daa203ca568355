"""The throttles' per-request fast paths: the C++ check builtin (against the general
binding), the Redis store's own EVALSHA on private connections (NOSCRIPT reload, killed
connections, error replies, fork), the HEADERS memo, DRF Request identities, and the
system checks of the Django app at ``manage.py check`` time."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
import redis
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings
from django_fastcache import _core, limiter, throttling
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory
from throttle_support import CODES, FakeRedisCache, redis_client

from tests.redis_servers import RedisServer

S = 1_000_000


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


# ------------------------------------------------------------------ the C++ builtin

def test_policy_fields_sit_where_the_builtin_reads_them():
    # src/bindings/register_limiter.cpp reads these positions of the Policy tuple.
    fields = limiter.Policy._fields
    assert len(fields) == 7
    assert (fields.index("code"), fields.index("burst"), fields.index("name"),
            fields.index("limit"), fields.index("period_us")) == (2, 3, 4, 5, 6)


@pytest.mark.parametrize("algorithm", list(CODES))
def test_builtin_decides_as_the_general_binding(algorithm):
    rng = random.Random(algorithm)
    fast_table, slow_table = _core.Limiter(1 << 20, 4), _core.Limiter(1 << 20, 4)
    check = fast_table.checker(limiter.Decision, "local")
    policy = limiter.make_policy("5/3s", algorithm)
    now_us = 1_699_920_000 * S
    for step in range(300):
        now_us += rng.choice([0, 1_000, 250_000, 900_000, 4 * S])
        cost = rng.choice([1, 1, 1, 2, 6])
        # Whole seconds as an int, else a float: both clocks DRF's timer may give.
        now = now_us // S if now_us % S == 0 else now_us / S
        got = check("k", policy, cost, now)
        want = slow_table.hit("k", policy.code, policy.limit, policy.period_us, policy.burst,
                              cost, round(now * S))
        assert type(got) is limiter.Decision
        assert tuple(got) == (*want[:4], policy, "local"), f"step {step}"


@pytest.mark.parametrize("now", [0.0000005, 0.0000015, 1_699_920_000.123456, 12.5, 7])
def test_builtin_rounds_seconds_like_python(now):
    check = _core.Limiter(1 << 20, 1).checker(limiter.Decision, "x")
    policy = limiter.make_policy("1/s", "fixed_window")
    # A fixed window's reset names the instant: the end of the second minus now.
    decision = check("round", policy, 1, now)
    assert decision.reset_after_us == S - round(now * S) % S


def test_builtin_rejects_bad_arguments_clearly():
    table = _core.Limiter(1 << 20, 1)
    check = table.checker(limiter.Decision, "local")
    policy = limiter.make_policy("5/min")
    with pytest.raises(TypeError, match="4 arguments"):
        check("k", policy, 1)
    with pytest.raises(TypeError, match="key must be a str"):
        check(b"k", policy, 1, 1.0)
    with pytest.raises(TypeError, match="Policy"):
        check("k", (1, 2, 3), 1, 1.0)
    with pytest.raises(TypeError, match="policy.name must be a str"):
        check("k", policy._replace(name=None), 1, 1.0)
    with pytest.raises(TypeError, match="cost must be an int"):
        check("k", policy, 1.0, 1.0)
    with pytest.raises(ValueError, match="cost"):
        check("k", policy, 0, 1.0)
    with pytest.raises(ValueError, match="negative"):
        check("k", policy, 1, -1.0)
    with pytest.raises(ValueError, match="finite"):
        check("k", policy, 1, float("nan"))
    with pytest.raises(TypeError, match="tuple subclass"):
        table.checker(dict, "local")


# ------------------------------------------------------------- the Redis direct path

def test_redis_checks_use_held_connections_not_the_command_path(server, monkeypatch):
    client = redis_client(server.url)
    client.flushall()
    cache = FakeRedisCache(client)
    policy = limiter.make_policy("3/min")

    def no_command_path(*args, **kwargs):
        raise AssertionError("the direct path must not go through execute_command")

    limiter.check(cache, "warm", policy)
    monkeypatch.setattr(client, "execute_command", no_command_path)
    decisions = [limiter.check(cache, "direct", policy) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert {d.source for d in decisions} == {"redis"}
    assert 0 < decisions[-1].retry_after <= 60
    store = limiter._store_for(cache)
    assert store.wire.held_connection() is not None  # one thread, one held connection


def test_single_connection_and_other_clients_go_through_redis_py(server):
    client = redis.Redis.from_url(server.url, single_connection_client=True)
    client.flushall()
    store = limiter.RedisStore(client, None)
    assert not store.wire.direct
    policy = limiter.make_policy("2/min")
    assert [store.hit("one", policy, 1)[0] for _ in range(3)] == [1, 1, 0]


def test_noscript_on_the_direct_path_loads_the_script_and_retries(server):
    client = redis_client(server.url)
    client.flushall()
    cache = FakeRedisCache(client)
    for algorithm in limiter.ALGORITHMS:
        policy = limiter.make_policy("2/min", algorithm)
        client.script_flush()
        decisions = [limiter.check(cache, f"flush-{algorithm}", policy) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
        assert {d.source for d in decisions} == {"redis"}
        sha = limiter._SCRIPTS[algorithm][1]
        assert client.script_exists(sha) == [True]


def test_a_connection_the_server_closed_is_retried_once_on_a_fresh_connection(server):
    client = redis_client(server.url)
    client.flushall()
    cache = FakeRedisCache(client)
    policy = limiter.make_policy("5/min")
    assert limiter.check(cache, "killed", policy).source == "redis"
    store = limiter._store_for(cache)
    conn = store.wire.held_connection()
    client.client_kill_filter(_id=_client_id(conn))
    decision = limiter.check(cache, "killed", policy)
    assert decision.source == "redis" and decision.allowed and decision.remaining == 3
    # The private connection reconnects on its next use.
    assert limiter.check(cache, "killed", policy).remaining == 2


def _client_id(conn) -> int:
    conn.send_command("CLIENT", "ID")
    return conn.read_response()


def test_an_error_reply_keeps_the_connection_in_sync(server, caplog):
    client = redis_client(server.url)
    client.flushall()
    cache = FakeRedisCache(client)
    policy = limiter.make_policy("5/min")
    store = limiter._store_for(cache)
    rkey = store.key("wrongtype", policy)
    client.set(rkey, "not a list")
    limiter._last_warning[0] = float("-inf")  # the warning is rate limited across tests
    with override_settings(FASTCACHE_THROTTLE={"FAILURE_MODE": "closed"}):
        cache = FakeRedisCache(client)  # the settings change dropped the memoized store
        decision = limiter.check(cache, "wrongtype", policy)
        assert decision.source == "failure-closed"
        store = limiter._store_for(cache)
        conn = store.wire.held_connection()
        client.delete(rkey)
        again = limiter.check(cache, "wrongtype", policy)
    assert again.source == "redis" and again.allowed
    assert store.wire.held_connection() is conn
    assert "WRONGTYPE" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_the_parents_connections(server):
    client = redis_client(server.url)
    cache = FakeRedisCache(client)
    policy = limiter.make_policy("100/min")
    limiter.check(cache, "fork", policy)
    store = limiter._store_for(cache)
    assert store.wire.held_connection() is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        try:
            os.write(write, b"empty" if store.wire.held_connection() is None else b"kept")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"empty"
    os.close(read)
    assert store.wire.held_connection() is not None  # the parent keeps its own


# ------------------------------------------------------------------ throttle details

def drf_request(**meta):
    request = Request(APIRequestFactory().get("/", **meta))
    request.user = AnonymousUser()
    return request


def test_decisions_are_kept_on_the_request_only_with_headers_on():
    throttle = type("T", (throttling.AnonRateThrottle,), {"rate": "5/min"})
    request = drf_request(REMOTE_ADDR="10.4.4.4")
    throttle().allow_request(request, None)
    assert not hasattr(request._request, "_fastcache_ratelimit")
    with override_settings(FASTCACHE_THROTTLE={"HEADERS": True}):
        throttle().allow_request(request, None)
        throttle().allow_request(request, None)
    assert [d.remaining for d in request._request._fastcache_ratelimit] == [3, 2]


@pytest.mark.parametrize(("num_proxies", "ident"), [
    (None, "1.1.1.1,2.2.2.2"), (0, "10.5.5.5"), (1, "2.2.2.2"), (2, "1.1.1.1")])
def test_identity_of_a_drf_request_follows_num_proxies(num_proxies, ident):
    request = drf_request(REMOTE_ADDR="10.5.5.5", HTTP_X_FORWARDED_FOR="1.1.1.1, 2.2.2.2")
    with override_settings(REST_FRAMEWORK={"NUM_PROXIES": num_proxies}):
        throttle = type("T", (throttling.AnonRateThrottle,), {"rate": "5/min"})()
        assert throttle.get_cache_key(request, None) == f"throttle_anon_{ident}"


def test_a_custom_cache_format_is_honoured():
    throttle = type("T", (throttling.AnonRateThrottle,),
                    {"rate": "5/min", "cache_format": "t:%(scope)s:%(ident)s"})()
    assert throttle.get_cache_key(drf_request(REMOTE_ADDR="10.6.6.6"), None) == "t:anon:10.6.6.6"


def test_changing_algorithm_on_a_class_takes_effect_for_new_instances():
    throttle = type("T", (throttling.AnonRateThrottle,), {"rate": "5/min"})
    assert throttle().policy.algorithm == "sliding_log"
    throttle.algorithm = "gcra"
    assert throttle().policy.algorithm == "gcra"


# ------------------------------------------------------------ checks at manage.py check

SETTINGS = """
SECRET_KEY = "x"
INSTALLED_APPS = {apps!r}
DATABASES = {{}}
CACHES = {{"default": {{"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}}}
FASTCACHE_THROTTLE = {{"FAILURE_MODE": "sometimes"}}
"""


@pytest.mark.parametrize("installed", [True, False])
def test_manage_py_check_runs_our_checks_when_the_app_is_installed(tmp_path, installed):
    apps = ["django.contrib.contenttypes", "django.contrib.auth"]
    if installed:
        apps.append("django_fastcache")
    (tmp_path / "bench_settings.py").write_text(textwrap.dedent(SETTINGS.format(apps=apps)))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), DJANGO_SETTINGS_MODULE="bench_settings")
    result = subprocess.run([sys.executable, "-m", "django", "check"], env=env,
                            capture_output=True, text=True, timeout=60)
    if installed:
        assert result.returncode != 0
        assert "fastcache.E103" in result.stderr
        assert "'sometimes'" in result.stderr
    else:  # nothing imported django_fastcache, so nothing registered its checks
        assert result.returncode == 0, result.stderr
        assert "fastcache" not in result.stdout + result.stderr
