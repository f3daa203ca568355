"""A FastCache on Redis touches only its own keys: ``clear()`` and the pattern operations
are anchored at ``<prefix>:`` (Django's ``prefix:version:key``), neighbours with similar
prefixes and the rate limiter's keys survive, a key another client wrote in bytes that
are not UTF-8 never breaks a listing, and ``incr`` during an outage answers as
django-redis does instead of claiming the key is missing."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import override_settings
from django_fastcache.cache import FastCache
from django_fastcache.errors import ConnectionInterrupted
from redis_servers import free_port

pytestmark = pytest.mark.redis

# Keys of neighbours sharing the database: another FastCache whose prefix starts with
# ours, apps with no separator after a similar word, the bare word, the rate limiter.
NEIGHBOURS = [b"apple:1:theirs", b"appointments:42", b"app_sessions:x", b"app",
              b"fcrl:{1.2.3.4}:sl", b"fc", b"fx:1:y", b"fcr", b":1:no-prefix-cache"]


def _cache(location: str, **params) -> FastCache:
    return FastCache(location, params)


def _all_keys(client) -> set[bytes]:
    return set(client.scan_iter(count=1000))


@pytest.mark.parametrize("prefix", ["app", "f", "fc", "fcr", "a*p", "ap[p]"])
def test_clear_deletes_only_this_caches_keys(clean_redis_server, prefix):
    raw = clean_redis_server.client()
    for key in NEIGHBOURS:
        raw.set(key, b"theirs")
    cache = _cache(clean_redis_server.url, KEY_PREFIX=prefix)
    cache.set("a", 1)
    cache.set("b", 2, version=7)
    cache.set("fastcache.tag:t", 3)
    assert len(_all_keys(raw)) == len(NEIGHBOURS) + 3
    cache.clear()
    assert _all_keys(raw) == set(NEIGHBOURS)
    assert cache.get("a") is None and cache.get("b", version=7) is None


def test_clear_without_a_prefix_keeps_other_apps_and_the_limiter(clean_redis_server):
    raw = clean_redis_server.client()
    for key in NEIGHBOURS:
        raw.set(key, b"theirs")
    cache = _cache(clean_redis_server.url)
    cache.set("a", 1)
    cache.clear()
    # Only keys of the form ":<version>:<key>" are this cache's (Django's key function
    # with an empty prefix); ":1:no-prefix-cache" is exactly such a key.
    assert _all_keys(raw) == set(NEIGHBOURS) - {b":1:no-prefix-cache"}


def test_aclear_deletes_only_this_caches_keys(clean_redis_server):
    raw = clean_redis_server.client()
    for key in NEIGHBOURS:
        raw.set(key, b"theirs")
    cache = _cache(clean_redis_server.url, KEY_PREFIX="app")

    async def run():
        await cache.aset("a", 1)
        await cache.aclear()
        return await cache.aget("a")

    assert asyncio.run(run()) is None
    assert _all_keys(raw) == set(NEIGHBOURS)


def test_clear_on_a_cluster_deletes_only_this_caches_keys(clean_redis_cluster):
    cache = _cache(clean_redis_cluster.url, KEY_PREFIX="app")
    raw = cache.get_client()
    for key in NEIGHBOURS:
        raw.set(key, b"theirs")
    cache.set_many({f"k{i}": i for i in range(50)})
    cache.clear()
    left = {k for node in raw.get_primaries()
            for k in raw.get_redis_connection(node).scan_iter(count=1000)}
    assert left == set(NEIGHBOURS)


def test_pattern_operations_stay_in_the_namespace(clean_redis_server):
    raw = clean_redis_server.client()
    for key in NEIGHBOURS:
        raw.set(key, b"theirs")
    cache = _cache(clean_redis_server.url, KEY_PREFIX="app")
    cache.set("x", 1)
    cache.set("y", 2)
    assert sorted(cache.keys("*")) == ["x", "y"]
    assert sorted(cache.iter_keys("*")) == ["x", "y"]
    assert cache.delete_pattern("*") == 2
    assert _all_keys(raw) == set(NEIGHBOURS)


def _custom_key(key, key_prefix, version):
    return f"custom/{key_prefix}/{version}/{key}"


def _bare_key(key, key_prefix, version):
    return key


def test_a_custom_key_function_clears_its_own_namespace(clean_redis_server):
    raw = clean_redis_server.client()
    raw.set(b"custom/appx/1/theirs", b"theirs")
    raw.set(b"custom/app/2/other-version", b"kept")
    cache = _cache(clean_redis_server.url, KEY_PREFIX="app", KEY_FUNCTION=_custom_key)
    cache.set("a", 1)
    cache.clear()
    assert _all_keys(raw) == {b"custom/appx/1/theirs", b"custom/app/2/other-version"}


def test_a_key_function_without_a_namespace_refuses_to_clear(clean_redis_server):
    raw = clean_redis_server.client()
    raw.set(b"theirs", b"x")
    cache = _cache(clean_redis_server.url, KEY_PREFIX="app", KEY_FUNCTION=_bare_key)
    with pytest.raises(ImproperlyConfigured, match="KEY_FUNCTION"):
        cache.clear()
    assert raw.get(b"theirs") == b"x"


# ---------------------------------------------------------------------- odd key bytes

def test_a_non_utf8_key_under_the_prefix_never_breaks_a_listing(clean_redis_server, caplog):
    raw = clean_redis_server.client()
    raw.set(b"app:1:\xff\xfe-binary", b"x")
    raw.set(b"app:1:\xed\xa0\x80-surrogate", b"x")  # UTF-8 of a lone surrogate: not UTF-8
    location = clean_redis_server.url
    cache = _cache(location, KEY_PREFIX="app")
    cache.set("good", 1)
    assert cache.keys("*") == ["good"]
    assert list(cache.iter_keys("*")) == ["good"]
    assert cache.stats()["undecodable_keys"] >= 2
    assert "not UTF-8" in caplog.text
    conf = {"default": {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": location,
                        "KEY_PREFIX": "app"}}
    with override_settings(CACHES=conf):
        out = io.StringIO()
        call_command("fastcache_keys", "*", "--json", stdout=out)
    assert [row["key"] for row in json.loads(out.getvalue())["keys"]] == ["good"]


# ---------------------------------------------------------------------- incr in an outage

def _down_cache(**options) -> FastCache:
    return _cache(f"redis://127.0.0.1:{free_port()}/0", OPTIONS={
        "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2, **options})


def test_incr_during_an_outage_returns_none_as_django_redis_does():
    cache = _down_cache()
    # The common counter idiom must not take an outage for a missing key.
    try:
        result = cache.incr("hits")
    except ValueError:  # pragma: no cover - the failure this test guards against
        pytest.fail("incr raised ValueError during an outage")
    assert result is None
    assert cache.decr("hits") is None
    assert cache.incr("hits", 1.5) is None  # the read-add-write path too
    assert asyncio.run(cache.aincr("hits")) is None
    assert asyncio.run(cache.adecr("hits")) is None


def test_incr_during_an_outage_raises_connection_interrupted_when_not_ignoring():
    cache = _down_cache(IGNORE_EXCEPTIONS=False)
    with pytest.raises(ConnectionInterrupted):
        cache.incr("hits")


def test_incr_of_a_missing_key_still_raises_value_error(clean_redis_server):
    cache = _cache(clean_redis_server.url, KEY_PREFIX="app")
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        asyncio.run(cache.aincr("missing"))
