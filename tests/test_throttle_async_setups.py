"""Native async on every Redis set-up a site may have: on async views the decorator and
the middleware check Redis through ``redis.asyncio`` on the running loop, never in a worker
thread, for FastCache, django-redis and Django's RedisCache over TLS (``rediss://``),
FastCache and django-redis with Sentinel, and django-redis's ShardClient; each exact under
concurrency.

Every test forbids the thread hop outright: ``sync_to_async``, the loop's executor and the
sync check all raise."""

from __future__ import annotations

import asyncio

import asgiref.sync
import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django_fastcache import limiter
from django_fastcache.ratelimit import RateLimitMiddleware, ratelimit
from redis_servers import RedisServer
from test_redis_client import tls_server  # noqa: F401 (a fixture)
from throttle_support import reset_limits

LIMIT = 20


@pytest.fixture
def no_thread(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the async check left the event loop")

    monkeypatch.setattr(asgiref.sync, "sync_to_async", forbidden)
    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", forbidden)
    monkeypatch.setattr(limiter.RedisStore, "check", forbidden)
    reset_limits()
    yield
    reset_limits()


@pytest.fixture(scope="module")
def second_server():
    with RedisServer() as server:
        yield server


def tls_caches(server, backend):
    url = f"rediss://127.0.0.1:{server.tls_port}/6"
    ssl = {"ssl_ca_certs": server.ca, "ssl_cert_reqs": "required"}
    # Dozens of TLS handshakes at once on a loaded 2-core machine can take longer than
    # redis-py's default 5 s: generous timeouts, each in the backend's own spelling.
    if backend == "fastcache":
        return {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": url,
                "KEY_PREFIX": "tls", "OPTIONS": {
                    "CONNECTION_KWARGS": ssl, "SOCKET_CONNECT_TIMEOUT": 30,
                    "SOCKET_TIMEOUT": 30}}
    if backend == "django-redis":
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url,
                "KEY_PREFIX": "tls", "OPTIONS": {
                    "CONNECTION_POOL_KWARGS": ssl, "SOCKET_CONNECT_TIMEOUT": 30,
                    "SOCKET_TIMEOUT": 30}}
    return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
            "KEY_PREFIX": "tls",
            "OPTIONS": {**ssl, "socket_connect_timeout": 30, "socket_timeout": 30}}


def sentinel_caches(sentinel_set, backend):
    if backend == "fastcache":
        return {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": "redis:///0",
                "KEY_PREFIX": "sent", "OPTIONS": sentinel_set.options()}
    return {"BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{sentinel_set.service}/0", "KEY_PREFIX": "sent",
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.SentinelClient",
                        "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                        "SENTINELS": sentinel_set.addresses}}


def shard_caches(one, two):
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": [one.url, two.url],
            "KEY_PREFIX": "shard", "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"}}


def concurrent_checks(cache, key: str, n: int = 2 * LIMIT) -> list[limiter.Decision]:
    policy = limiter.make_policy(f"{LIMIT}/min")

    async def storm():
        return await asyncio.gather(*(limiter.acheck(cache, key, policy) for _ in range(n)))

    return asyncio.run(storm())


def assert_exact_and_native(key: str = "storm") -> None:
    from django.core.cache import cache

    assert limiter.store_kind(cache) == "redis"
    decisions = concurrent_checks(cache, key)
    assert sum(d.allowed for d in decisions) == LIMIT
    assert {d.source for d in decisions} == {"redis"}  # no failure mode stood in
    # A second event loop gets clients of its own and sees the same state.
    assert not any(d.allowed for d in concurrent_checks(cache, key, 5))


def assert_decorator_and_middleware_work() -> None:
    def req(path="/"):
        return RequestFactory().get(path, REMOTE_ADDR="10.4.4.4")

    @ratelimit(rate="2/m", key="ip")
    async def view(request):
        return HttpResponse("ok")

    async def inner(request):
        return HttpResponse("ok")

    async def run(middleware):
        codes = [(await view(req())).status_code for _ in range(3)]
        codes += [(await middleware(req("/mw"))).status_code for _ in range(3)]
        return codes

    with override_settings(FASTCACHE_THROTTLE={"RULES": [{"path": "^/mw", "rate": "2/m"}]}):
        middleware = RateLimitMiddleware(inner)
        assert asyncio.run(run(middleware)) == [200, 200, 429, 200, 200, 429]


@pytest.mark.parametrize("backend", ["fastcache", "django-redis", "django-rediscache"])
def test_tls_checks_run_on_the_loop_exactly_with_the_sync_clients_tls_options(
        backend, tls_server, no_thread):  # noqa: F811
    tls_server.client(db=6).flushdb()
    with override_settings(CACHES={"default": tls_caches(tls_server, backend)}):
        from django.core.cache import cache

        store = limiter._store_for(cache)

        async def twin():
            return store.async_client_for("k")

        client = asyncio.run(twin())
        pool = client.connection_pool
        assert pool.connection_class is redis.asyncio.SSLConnection
        assert pool.connection_kwargs["ssl_ca_certs"] == tls_server.ca
        assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
        assert pool.connection_kwargs["ssl_check_hostname"] is True
        assert_exact_and_native()
        assert_decorator_and_middleware_work()
    assert tls_server.client(db=6).keys("tls:*")


def test_a_tls_option_redis_asyncio_lacks_keeps_the_worker_thread():
    # OCSP checks exist in redis-py's sync client only: the asyncio twin could not verify
    # what the sync client verifies, so there is none (never a weaker TLS connection).
    client = redis.Redis.from_url("rediss://127.0.0.1:1/0", ssl_validate_ocsp=True)
    assert limiter._AsyncTwins(client)._make is None
    plain = redis.Redis.from_url("rediss://127.0.0.1:1/0", ssl_ca_certs="/ca.pem")
    assert limiter._AsyncTwins(plain)._make is not None


@pytest.mark.parametrize("backend", ["fastcache", "django-redis"])
def test_sentinel_checks_run_on_the_loop_exactly(backend, clean_redis_sentinel, no_thread):
    caches = {"default": sentinel_caches(clean_redis_sentinel, backend)}
    with override_settings(CACHES=caches):
        from django.core.cache import cache

        store = limiter._store_for(cache)

        async def twin():
            return store.async_client_for("k")

        pool = asyncio.run(twin()).connection_pool
        assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
        assert (pool.service_name, pool.is_master) == (clean_redis_sentinel.service, True)
        assert_exact_and_native()
        assert_decorator_and_middleware_work()
    host, port = clean_redis_sentinel.primary_address()
    assert redis.Redis(host, port).keys("sent:*")  # on the primary the sentinels name


def test_shard_client_checks_pick_the_shard_sync_and_async(
        clean_redis_server, second_server, monkeypatch):
    second_server.command("FLUSHALL")
    reset_limits()
    with override_settings(CACHES={"default": shard_caches(clean_redis_server, second_server)}):
        from django.core.cache import cache

        assert limiter.store_kind(cache) == "redis"  # no longer DRF's algorithm on it
        policy = limiter.make_policy("3/min")
        idents = [f"client-{i}" for i in range(40)]
        for ident in idents:  # sync: exact per identity
            assert [limiter.check(cache, ident, policy).allowed for _ in range(4)] == [
                True, True, True, False]
        # Each key lives on the shard ShardClient names for it (the identity's hash tag).
        store = limiter._store_for(cache)
        servers = {clean_redis_server.port: clean_redis_server, second_server.port: second_server}
        used = set()
        for ident in idents:
            rkey = store.key(ident, policy)
            shard = cache.client.get_server(rkey)
            port = shard.connection_pool.connection_kwargs["port"]
            assert servers[port].client().exists(rkey)
            used.add(port)
        assert used == set(servers)  # both shards hold some

        def forbidden(*args, **kwargs):
            raise AssertionError("the async check left the event loop")

        monkeypatch.setattr(asgiref.sync, "sync_to_async", forbidden)
        monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", forbidden)
        monkeypatch.setattr(limiter.RedisStore, "check", forbidden)
        for ident in ("async-a", "async-b", "async-c"):
            assert_exact_and_native(ident)
        assert_decorator_and_middleware_work()
        # reset() of one identity finds its keys on its shard
        monkeypatch.undo()
        limiter.reset(cache, "client-0")
        assert limiter.check(cache, "client-0", policy).allowed
