"""The throttles' state follows their ``cache``, on every kind of cache a site may have:
the embedded FastCache, FastCache on Redis, django-redis, Django's RedisCache, LocMemCache.

DRF's throttle scenarios are written the way DRF writes them (``cache.clear()`` in setUp,
``timer`` overridden on the class), then the control API (reset, peek, the switch),
isolation by KEY_PREFIX, a differential test against DRF's own classes on the same cache,
and the multi-process storm with django-redis and Django's RedisCache as the default."""

from __future__ import annotations

import multiprocessing
import random
import threading

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.test import override_settings
from django_fastcache import limiter
from django_fastcache.cache import FastCache
from django_fastcache.throttling import AnonRateThrottle, UserRateThrottle
from django_redis.cache import RedisCache as DjangoRedisCache
from rest_framework import throttling as drf
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView
from throttle_support import reset_limits

STORES = ["embedded", "fastcache-redis", "django-redis", "django-rediscache", "locmem"]
KIND = {"embedded": "local", "fastcache-redis": "redis", "django-redis": "redis",
        "django-rediscache": "redis", "locmem": "cache"}


def build(name: str, url: str, prefix: str = "site1"):
    params = {"KEY_PREFIX": prefix}
    if name == "embedded":
        return FastCache(f"stores-{prefix}", params)
    if name == "fastcache-redis":
        return FastCache(url, params)
    if name == "django-redis":
        return DjangoRedisCache(url, params)
    if name == "django-rediscache":
        return RedisCache(url, params)
    return LocMemCache(f"stores-{prefix}", params)


@pytest.fixture(params=STORES)
def store_cache(request, redis_server):
    redis_server.command("FLUSHALL")
    reset_limits()
    return build(request.param, redis_server.url), request.param


class User:
    is_authenticated = True
    is_active = True

    def __init__(self, pk):
        self.pk = pk


class DrfScenarios:
    """DRF's tests/test_throttling.py scenarios, against ``self.cache``."""

    @pytest.fixture(autouse=True)
    def setUp(self, store_cache):
        self.cache, self.name = store_cache
        self.cache.clear()  # what DRF's tests do to reset throttles

    def throttle(self, base=UserRateThrottle, **attrs):
        attrs.setdefault("cache", self.cache)
        return type(f"{base.__name__}Sub", (base,), attrs)

    def view(self, *throttles):
        class View(APIView):
            throttle_classes = throttles

            def get(self, request):
                return Response("foo")

        return View.as_view()

    @staticmethod
    def set_throttle_timer(throttle, value):
        throttle.timer = lambda self: value


class TestDrfScenariosOnEveryStore(DrfScenarios):
    def test_store_is_the_expected_one(self):
        assert limiter.store_kind(self.cache) == KIND[self.name]

    def test_requests_are_throttled(self):
        throttle = self.throttle(rate="3/sec", scope="seconds")
        self.set_throttle_timer(throttle, 0)
        view = self.view(throttle)
        request = APIRequestFactory().get("/")
        codes = [view(request).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]

    def test_request_throttling_expires(self):
        throttle = self.throttle(rate="3/sec", scope="seconds")
        view = self.view(throttle)
        request = APIRequestFactory().get("/")
        self.set_throttle_timer(throttle, 0)
        for _ in range(4):
            response = view(request)
        assert response.status_code == 429
        self.set_throttle_timer(throttle, 1)
        assert view(request).status_code == 200

    def test_seconds_and_minutes_fields(self):
        for rate, headers in (("3/sec", [None, None, None, "1"]),
                              ("3/min", [None, None, None, "60"])):
            self.cache.clear()
            throttle = self.throttle(rate=rate, scope="s")
            self.set_throttle_timer(throttle, 0)
            view = self.view(throttle)
            request = APIRequestFactory().get("/")
            got = [view(request).get("Retry-After") for _ in range(4)]
            assert got == headers

    def test_next_rate_remains_constant_if_followed(self):
        throttle = self.throttle(rate="3/min", scope="minutes")
        view = self.view(throttle)
        request = APIRequestFactory().get("/")
        for t in (0, 20, 40, 60, 80, 100):
            self.set_throttle_timer(throttle, t)
            assert view(request).status_code == 200

    def test_wait_returns_correct_waiting_time_without_history(self):
        throttle = self.throttle(rate="3/sec", scope="seconds")()
        throttle.num_requests = 1
        throttle.duration = 60
        throttle.history = []
        waiting_time = throttle.wait()
        assert isinstance(waiting_time, float)
        assert waiting_time == 30.0

    def test_wait_returns_none_if_there_are_no_available_requests(self):
        throttle = self.throttle(rate="3/sec", scope="seconds")()
        throttle.num_requests = 1
        throttle.duration = 60
        throttle.now = throttle.timer()
        throttle.history = [throttle.timer() for _ in range(3)]
        assert throttle.wait() is None

    def test_history_lists_the_counted_requests(self):
        throttle = self.throttle(rate="3/min", scope="h")
        request = HttpRequest()
        request.META["REMOTE_ADDR"] = "10.2.2.2"
        request.user = AnonymousUser()
        for t in (10, 20):
            self.set_throttle_timer(throttle, t)
            instance = throttle()
            assert instance.allow_request(request, None)
        assert instance.history == [20, 10]  # newest first, on every store

    def test_clear_resets_the_throttles(self):
        throttle = self.throttle(rate="1/day", scope="daily")
        view = self.view(throttle)
        request = APIRequestFactory().get("/")
        assert [view(request).status_code for _ in range(2)] == [200, 429]
        self.cache.clear()
        assert view(request).status_code == 200

    def test_reset_forgets_one_identity_in_one_scope(self):
        daily = self.throttle(AnonRateThrottle, rate="1/day", scope="daily")
        other = self.throttle(AnonRateThrottle, rate="1/day", scope="other")
        view = self.view(daily, other)
        alice = APIRequestFactory().get("/", REMOTE_ADDR="10.0.0.1")
        bob = APIRequestFactory().get("/", REMOTE_ADDR="10.0.0.2")
        assert [view(alice).status_code, view(alice).status_code] == [200, 429]
        assert [view(bob).status_code, view(bob).status_code] == [200, 429]
        daily().reset(key="throttle_daily_10.0.0.1")
        other().reset(key="throttle_other_10.0.0.1")
        assert view(alice).status_code == 200
        assert view(bob).status_code == 429

    def test_peek_does_not_count(self):
        throttle = self.throttle(AnonRateThrottle, rate="3/min", scope="peek")
        request = HttpRequest()
        request.META["REMOTE_ADDR"] = "10.1.1.1"
        request.user = AnonymousUser()
        assert throttle().allow_request(request, None)
        for _ in range(5):
            usage = throttle().peek(request)
            assert (usage.limit, usage.remaining, usage.allowed) == (3, 2, True)
            assert 0 < usage.reset_after <= 60
        assert throttle().allow_request(request, None)
        assert throttle().allow_request(request, None)
        usage = throttle().peek(request)
        assert (usage.remaining, usage.allowed) == (0, False)
        assert not throttle().allow_request(request, None)

    def test_switch_turns_limiting_off(self):
        throttle = self.throttle(rate="1/day", scope="switch")
        view = self.view(throttle)
        request = APIRequestFactory().get("/")
        assert view(request).status_code == 200
        with limiter.disabled():
            assert [view(request).status_code for _ in range(5)] == [200] * 5
        assert view(request).status_code == 429
        with override_settings(FASTCACHE_THROTTLE={"ENABLED": False}):
            assert view(request).status_code == 200
        assert view(request).status_code == 429


@pytest.mark.parametrize("name", ["fastcache-redis", "django-redis", "django-rediscache"])
def test_sites_with_other_prefixes_share_no_counters_and_clear_only_their_own(
        name, clean_redis_server):
    reset_limits()
    one = build(name, clean_redis_server.url, "site1")
    two = build(name, clean_redis_server.url, "site2")
    policy = limiter.make_policy("1/day")
    assert limiter.check(one, "k", policy).allowed
    assert limiter.check(two, "k", policy).allowed  # another site: its own counter
    assert not limiter.check(one, "k", policy).allowed
    keys = clean_redis_server.client().keys("*")
    assert all(k.startswith((b"site1:", b"site2:")) for k in keys), keys
    if name == "fastcache-redis":  # a FastCache clears its prefix only
        one.clear()
        assert limiter.check(one, "k", policy).allowed
        assert not limiter.check(two, "k", policy).allowed


def test_embedded_caches_keep_state_per_location():
    reset_limits()
    one, two = FastCache("loc-a", {}), FastCache("loc-b", {})
    policy = limiter.make_policy("1/day")
    assert limiter.check(one, "k", policy).allowed
    assert limiter.check(two, "k", policy).allowed
    assert not limiter.check(FastCache("loc-a", {}), "k", policy).allowed  # same LOCATION
    two.clear()
    assert limiter.check(two, "k", policy).allowed
    assert not limiter.check(one, "k", policy).allowed


# ----------------------------------------------------------- differential against DRF

def run_sequence(cls, steps, read_history=False):
    clock = [0.0]
    cls.timer = lambda self: clock[0]
    out = []
    for ident, advance in steps:
        clock[0] += advance
        request = HttpRequest()
        request.META["REMOTE_ADDR"] = ident
        request.user = AnonymousUser()
        throttle = cls()
        allowed = throttle.allow_request(request, None)
        if read_history:
            # What DRF-style code reads: the history, then wait() from its last entry.
            history = list(throttle.history)
            out.append((allowed, history, drf_wait(throttle, history), throttle.wait()))
        else:
            out.append((allowed, None if allowed else throttle.wait()))
    return out


def drf_wait(throttle, history):
    # DRF's SimpleRateThrottle.wait(), written out over a history read from the throttle.
    remaining = throttle.duration - (throttle.now - history[-1]) if history else throttle.duration
    available = throttle.num_requests - len(history) + 1
    return None if available <= 0 else remaining / float(available)


def ours_and_drfs(store_cache, rate: str, seed: str, divisors: tuple, *,
                  read_history: bool = False) -> tuple[list, list]:
    """The same 300 seeded requests (two clients, gaps of 0, period/divisor or 2 periods)
    through our AnonRateThrottle and DRF's on one cache, each from a cleared cache."""
    cache, name = store_cache
    rng = random.Random(f"{seed}{name}{rate}")
    d = limiter.parse_rate(rate).period
    gaps = [0.0, 0.0, *(d / n for n in divisors), d * 2]
    steps = [(rng.choice(["1.1.1.1", "2.2.2.2"]), rng.choice(gaps)) for _ in range(300)]
    theirs = type("Drf", (drf.AnonRateThrottle,), {"rate": rate, "cache": cache})
    ours = type("Ours", (AnonRateThrottle,), {"rate": rate, "cache": cache})
    cache.clear()
    expected = run_sequence(theirs, steps, read_history=read_history)
    cache.clear()
    reset_limits()
    return run_sequence(ours, steps, read_history=read_history), expected


@pytest.mark.parametrize("rate", ["3/min", "5/sec", "2/hour"])
def test_same_decisions_and_waits_as_drf_on_the_same_cache(store_cache, rate):
    got, expected = ours_and_drfs(store_cache, rate, "", (70, 11, 3))
    assert [a for a, _ in got] == [a for a, _ in expected]
    assert sum(1 for a, _ in got if not a) > 10
    for (_, mine), (_, drfs) in zip(got, expected, strict=True):
        assert (mine is None) == (drfs is None)
        if mine is not None:
            assert isinstance(mine, float)
            assert mine == pytest.approx(drfs, abs=2e-6)


@pytest.mark.parametrize("rate", ["3/min", "5/sec", "2/hour"])
def test_history_and_the_waits_read_from_it_are_drfs_on_the_same_cache(store_cache, rate):
    """Every store, the in-process table included, keeps the sliding log's times to the
    microsecond: on a clock that moves in whole microseconds (steps exact in binary, so
    DRF's float arithmetic is exact too, window boundaries included) the history and the
    waits DRF-style code computes from it are DRF's, equal to the last bit."""
    got, expected = ours_and_drfs(store_cache, rate, "history", (64, 16, 4), read_history=True)
    assert sum(1 for row in got if not row[0]) > 10
    for step, (mine, drfs) in enumerate(zip(got, expected, strict=True)):
        # (allowed, history newest first, DRF's formula over it, wait())
        assert mine == drfs, step


# ----------------------------------------------- Redis keys name the algorithm and period

@pytest.mark.parametrize("name", ["embedded", "fastcache-redis", "django-redis",
                                  "django-rediscache"])
def test_one_identity_with_two_periods_keeps_two_states(name, clean_redis_server):
    reset_limits()
    cache = build(name, clean_redis_server.url, "per")
    cache.clear()
    second, minute = limiter.make_policy("1/s"), limiter.make_policy("1/min")
    assert limiter.check(cache, "k", second, now=100.0).allowed
    assert limiter.check(cache, "k", minute, now=100.0).allowed  # not the 1/s state
    assert not limiter.check(cache, "k", minute, now=101.5).allowed
    assert limiter.check(cache, "k", second, now=101.5).allowed
    assert limiter.peek(cache, "k", minute, now=101.5).remaining == 0
    if name != "embedded":
        keys = sorted(k.decode() for k in clean_redis_server.client().keys("*"))
        assert keys == ["per:1:fcrl:{k}:sl:1s", "per:1:fcrl:{k}:sl:60s"]
    limiter.reset(cache, "k", second)  # one policy: the other keeps its state
    assert not limiter.check(cache, "k", minute, now=102.0).allowed
    assert limiter.check(cache, "k", second, now=102.0).allowed
    limiter.reset(cache, "k")  # every policy of the identity
    assert limiter.check(cache, "k", minute, now=102.0).allowed
    cache.clear()
    assert limiter.check(cache, "k", minute, now=102.0).allowed


def test_reset_of_every_policy_touches_only_that_identity(clean_redis_server):
    reset_limits()
    cache = build("django-redis", clean_redis_server.url, "glob")
    policy = limiter.make_policy("1/min")
    for key in ("a*", "a*b", "a?", "a[1]"):  # glob characters in identities stay literal
        assert limiter.check(cache, key, policy).allowed
    limiter.reset(cache, "a*")
    assert limiter.check(cache, "a*", policy).allowed
    for key in ("a*b", "a?", "a[1]"):
        assert not limiter.check(cache, key, policy).allowed


def test_key_suffix_names_whole_seconds_or_milliseconds():
    assert limiter._key_suffix(limiter.make_policy("5/15m", "gcra")) == "gc:900s"
    rate = limiter.Rate(3, 1_500_000)
    assert limiter._key_suffix(limiter.make_policy(rate, "fixed_window")) == "fw:1500ms"


# --------------------------------------- Django's RedisCache: the one private access

def test_django_rediscache_client_is_reached_through_its_private_cache():
    """Django (4.2 to 5.2) has no public route to RedisCache's redis-py client: the
    throttles read ``RedisCache._cache.get_client()`` in one function. This pins that shape
    so a Django release that changes it fails here, by name, not in production."""
    import django
    import redis

    cache = RedisCache("redis://127.0.0.1:1/0", {})
    assert type(cache).__dict__["_cache"] is not None, "Django's RedisCache._cache is gone"
    client = limiter.django_rediscache_client(cache)
    assert isinstance(client, redis.Redis)
    assert client.connection_pool is cache._cache.get_client(None, write=True).connection_pool

    class Changed(RedisCache):
        _cache = None

    with pytest.raises(ImproperlyConfigured, match=rf"Django {django.get_version()}'s"):
        limiter.django_rediscache_client(Changed("redis://127.0.0.1:1/0", {}))


# ------------------------------------------------- the storm with a Redis default cache

LIMIT = 100


def _storm_worker(barrier, results):
    # A forked child with the parent's settings: the throttle's cache is the default.
    from django.core.cache import caches

    caches["default"].get("warm")  # its own connections, made after the fork
    cls = type("Storm", (AnonRateThrottle,), {"rate": f"{LIMIT}/min"})
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "10.9.9.9"
    request.user = AnonymousUser()
    allowed = [0] * 8
    barrier.wait(timeout=30)

    def work(i):
        allowed[i] = sum(cls().allow_request(request, None) for _ in range(60))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    results.put(sum(allowed))


@pytest.mark.parametrize("backend", ["django_redis.cache.RedisCache",
                                     "django.core.cache.backends.redis.RedisCache"])
def test_four_processes_with_a_redis_default_cache_allow_exactly_the_limit(
        backend, clean_redis_server):
    reset_limits()
    caches = {"default": {"BACKEND": backend, "LOCATION": clean_redis_server.url,
                          "KEY_PREFIX": "storm"}}
    with override_settings(CACHES=caches):
        from django.core.cache import cache

        assert limiter.store_kind(cache) == "redis"
        ctx = multiprocessing.get_context("fork")
        for _ in range(2):
            cache.clear()
            barrier, results = ctx.Barrier(4), ctx.Queue()
            procs = [ctx.Process(target=_storm_worker, args=(barrier, results))
                     for _ in range(4)]
            for p in procs:
                p.start()
            total = sum(results.get(timeout=120) for _ in procs)
            for p in procs:
                p.join(timeout=30)
                assert p.exitcode == 0
            assert total == LIMIT  # 4 x 8 x 60 = 1920 attempts
        assert any(k.startswith(b"storm:") for k in clean_redis_server.client().keys("*"))


# ------------------------------------------------------------- other Django caches

def file_cache(tmp_path):
    from django.core.cache.backends.filebased import FileBasedCache

    return FileBasedCache(str(tmp_path), {})


def test_a_rolling_deploy_from_drf_keeps_its_counts_on_a_django_cache(tmp_path):
    cache = file_cache(tmp_path)
    theirs = type("Drf", (drf.AnonRateThrottle,), {"rate": "3/min", "cache": cache})
    ours = type("Ours", (AnonRateThrottle,), {"rate": "3/min", "cache": cache})
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "10.3.3.3"
    request.user = AnonymousUser()
    assert limiter.store_kind(cache) == "cache"
    assert [theirs().allow_request(request, None) for _ in range(2)] == [True, True]
    assert [ours().allow_request(request, None) for _ in range(2)] == [True, False]
    assert not theirs().allow_request(request, None)  # both read one history


def test_fixed_window_on_a_django_cache_counts_with_incr(tmp_path):
    cache = file_cache(tmp_path)
    policy = limiter.make_policy("3/min", "fixed_window")
    got = [limiter.check(cache, "fw", policy, now=120.5).allowed for _ in range(4)]
    assert got == [True, True, True, False]
    assert limiter.peek(cache, "fw", policy, now=121).remaining == 0
    assert limiter.check(cache, "fw", policy, now=180.0).allowed  # the next window
    limiter.reset(cache, "fw", policy)
    with pytest.raises(Exception, match="gcra"):
        limiter.check(cache, "g", limiter.make_policy("3/min", "gcra"))


def test_system_checks_say_what_exactness_the_site_gets(tmp_path):
    from django_fastcache import checks as fc_checks

    rest = {"DEFAULT_THROTTLE_CLASSES": ["django_fastcache.throttling.AnonRateThrottle"],
            "NUM_PROXIES": 0}
    kinds = {
        "django.core.cache.backends.filebased.FileBasedCache": "fastcache.I102",
        "django.core.cache.backends.locmem.LocMemCache": "fastcache.I101",
        "django_fastcache.cache.FastCache": "fastcache.I101",
    }
    for backend, expected in kinds.items():
        caches = {"default": {"BACKEND": backend, "LOCATION": str(tmp_path)
                              if "File" in backend else ""}}
        with override_settings(CACHES=caches, REST_FRAMEWORK=rest):
            ids = [m.id for m in limiter.check_throttle_settings()]
        assert ids == [expected], backend
    caches = {"default": {"BACKEND": "django_redis.cache.RedisCache",
                          "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=caches, REST_FRAMEWORK=rest):
        assert limiter.check_throttle_settings() == []
        assert fc_checks.check_throttle_proxies() == []


class GcraOnFiles(AnonRateThrottle):
    algorithm = "gcra"
    rate = "5/min"


def test_gcra_on_a_shared_django_cache_is_a_configuration_error(tmp_path):
    from django_fastcache import checks as fc_checks

    GcraOnFiles.cache = file_cache(tmp_path)
    try:
        with override_settings(REST_FRAMEWORK={
                "DEFAULT_THROTTLE_CLASSES": [f"{__name__}.GcraOnFiles"]}):
            messages = fc_checks.check_throttle_caches()
    finally:
        del GcraOnFiles.cache
    assert [m.id for m in messages] == ["fastcache.E208"]


def test_long_identities_name_fixed_size_redis_keys(clean_redis_server):
    cache = build("django-redis", clean_redis_server.url)
    cls = type("Long", (AnonRateThrottle,), {"rate": "1/min", "cache": cache})
    for i in range(3):
        request = HttpRequest()
        request.META["REMOTE_ADDR"] = "10.0.0.1"
        request.META["HTTP_X_FORWARDED_FOR"] = str(i) * 8000  # NUM_PROXIES=None: DRF's ident
        request.user = AnonymousUser()
        assert cls().allow_request(request, None)
        assert not cls().allow_request(request, None)
    keys = clean_redis_server.client().keys("*")
    assert len(keys) == 3 and max(map(len, keys)) < 200


def test_throttles_on_two_embedded_caches_keep_their_state_apart():
    reset_limits()
    one, two = FastCache("alt-a", {}), FastCache("alt-b", {})
    a = type("A", (AnonRateThrottle,), {"rate": "2/min", "cache": one})
    b = type("B", (AnonRateThrottle,), {"rate": "2/min", "cache": two})
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "10.4.4.4"
    request.user = AnonymousUser()
    got = [(a().allow_request(request, None), b().allow_request(request, None))
           for _ in range(3)]
    assert got == [(True, True), (True, True), (False, False)]
    one.clear()
    assert a().allow_request(request, None) and not b().allow_request(request, None)


def test_scoped_throttle_reset_and_peek_follow_the_view(clean_redis_server):
    from django_fastcache.throttling import ScopedRateThrottle

    reset_limits()
    cache = build("django-rediscache", clean_redis_server.url)
    cls = type("Scoped", (ScopedRateThrottle,), {"cache": cache,
                                                 "THROTTLE_RATES": {"uploads": "1/min"}})
    view = type("V", (), {"throttle_scope": "uploads"})()
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "10.5.5.5"
    request.user = AnonymousUser()
    assert cls().allow_request(request, view)
    assert not cls().allow_request(request, view)
    assert cls().peek(request, view).remaining == 0
    assert cls().peek(request, object()) is None  # a view without a scope
    cls().reset(request, view)
    assert cls().peek(request, view).remaining == 1
    assert cls().allow_request(request, view)


def test_a_dummy_cache_still_throttles_in_this_process():
    from django.core.cache.backends.dummy import DummyCache

    reset_limits()
    cache = DummyCache("dummy", {})
    assert limiter.store_kind(cache) == "local"
    policy = limiter.make_policy("1/day")
    assert limiter.check(cache, "dummy-k", policy).allowed
    assert not limiter.check(cache, "dummy-k", policy).allowed
