"""The plain-Django ``ratelimit`` decorator (function, class-based, async views; keys;
block=False) and ``RateLimitMiddleware`` (per-path rules, RateLimit headers, DRF
decisions), on the in-process table and on Redis."""

from __future__ import annotations

import asyncio

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django.utils.decorators import method_decorator
from django.views import View
from django_fastcache import limiter
from django_fastcache.ratelimit import RateLimitMiddleware, ratelimit
from throttle_support import FakeRedisCache, redis_client, reset_limits

from tests.redis_servers import RedisServer

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(autouse=True)
def settings_and_table():
    from django.core.cache import caches

    reset_limits()
    with override_settings(CACHES=LOCMEM):
        caches["default"].clear()  # the limits of a LocMemCache live in it, as DRF's do
        yield
    reset_limits()


def get(path="/", addr="1.1.1.1", method="get", **headers):
    request = getattr(RequestFactory(), method)(path, REMOTE_ADDR=addr, **headers)
    request.user = AnonymousUser()
    return request


def ok(request, *args, **kwargs):
    return HttpResponse("ok")


def test_function_view_by_ip():
    view = ratelimit(rate="2/min")(ok)
    assert [view(get()).status_code for _ in range(3)] == [200, 200, 429]
    assert view(get(addr="2.2.2.2")).status_code == 200
    response = view(get())
    assert response["Retry-After"] == "60"


def test_method_filter_and_block_false():
    seen = []

    @ratelimit(rate="1/min", method=["POST"], block=False)
    def view(request):
        seen.append(getattr(request, "limited", False))
        return HttpResponse("ok")

    for _ in range(3):
        view(get())  # GET is not limited
    view(get(method="post"))
    view(get(method="post"))
    assert seen == [False, False, False, False, True]


def test_header_and_callable_keys():
    by_key = ratelimit(rate="1/min", key="header:x-api-key")(ok)
    assert by_key(get(HTTP_X_API_KEY="a")).status_code == 200
    assert by_key(get(HTTP_X_API_KEY="b")).status_code == 200
    assert by_key(get(HTTP_X_API_KEY="a")).status_code == 429

    exempt_staff = ratelimit(rate="1/min", key=lambda r: None if r.GET.get("staff") else "all")(ok)
    assert [exempt_staff(get("/?staff=1")).status_code for _ in range(3)] == [200] * 3
    assert [exempt_staff(get()).status_code for _ in range(2)] == [200, 429]


def test_user_key_separates_users():
    class U:
        is_authenticated = True

        def __init__(self, pk):
            self.pk = pk

    view = ratelimit(rate="1/min", key="user")(ok)
    first, second = get(), get()
    first.user, second.user = U(1), U(2)
    assert view(first).status_code == 200
    assert view(second).status_code == 200
    assert view(first).status_code == 429


def test_class_based_views_decorated_or_via_method_decorator():
    @ratelimit(rate="1/min")
    class Whole(View):
        def get(self, request):
            return HttpResponse("ok")

    class PerMethod(View):
        @method_decorator(ratelimit(rate="1/min"))
        def get(self, request):
            return HttpResponse("ok")

    for cls in (Whole, PerMethod):
        view = cls.as_view()
        assert [view(get()).status_code for _ in range(2)] == [200, 429]


def test_async_view():
    @ratelimit(rate="2/min")
    async def view(request):
        return HttpResponse("ok")

    async def run():
        return [(await view(get())).status_code for _ in range(3)]

    assert asyncio.iscoroutinefunction(view)
    assert asyncio.run(run()) == [200, 200, 429]


def test_bad_arguments_fail_at_decoration():
    with pytest.raises(ImproperlyConfigured, match="'1/fortnight'"):
        ratelimit(rate="1/fortnight")(ok)
    with pytest.raises(ImproperlyConfigured, match="key must be"):
        ratelimit(rate="1/min", key="cookie")(ok)
    with pytest.raises(ImproperlyConfigured, match="cost 5 exceeds"):
        ratelimit(rate="1/min", cost=5)(ok)


def test_ratelimit_headers_opt_in():
    view = ratelimit(rate="3/min", group="api")(ok)
    assert "RateLimit" not in view(get())
    with override_settings(FASTCACHE_THROTTLE={"HEADERS": True}):
        response = view(get())
        assert response["RateLimit-Policy"] == '"api";q=3;w=60'
        assert response["RateLimit"] == '"api";r=1;t=60'
        view(get())
        denied = view(get())
        assert denied.status_code == 429
        assert denied["RateLimit"] == '"api";r=0;t=60'
        assert denied["Retry-After"] == "60"


RULES = [
    {"path": r"^/login", "rate": "2/min", "method": "POST", "name": "login"},
    {"path": r"^/api/", "rate": "3/15m", "key": "ip", "name": "api", "algorithm": "gcra"},
]


def test_middleware_rules_by_path_and_method():
    with override_settings(FASTCACHE_THROTTLE={"RULES": RULES, "HEADERS": True}):
        middleware = RateLimitMiddleware(ok)
        assert [middleware(get("/login", method="post")).status_code for _ in range(3)] == \
            [200, 200, 429]
        assert middleware(get("/login")).status_code == 200  # GET: no rule applies
        assert [middleware(get("/other")).status_code for _ in range(5)] == [200] * 5
        api = [middleware(get("/api/x")) for _ in range(4)]
        assert [r.status_code for r in api] == [200, 200, 200, 429]
        assert api[0]["RateLimit-Policy"] == '"api";q=3;w=900'
        assert api[-1]["Retry-After"] == "300"  # gcra: one unit back every 15m / 3


def test_async_middleware():
    async def inner(request):
        return HttpResponse("ok")

    with override_settings(FASTCACHE_THROTTLE={"RULES": RULES}):
        middleware = RateLimitMiddleware(inner)

        async def run():
            return [(await middleware(get("/api/"))).status_code for _ in range(4)]

        assert asyncio.run(run()) == [200, 200, 200, 429]


@pytest.mark.parametrize("rules", [
    "not a list",
    [{"path": "^/x"}],
    [{"path": "(", "rate": "1/m"}],
    [{"path": "^/x", "rate": "1/m", "colour": "red"}],
    [{"path": "^/x", "rate": "1/m", "algorithm": "token"}],
])
def test_middleware_rejects_bad_rules_at_start_up(rules):
    with override_settings(FASTCACHE_THROTTLE={"RULES": rules}):
        with pytest.raises(ImproperlyConfigured, match="RULES"):
            RateLimitMiddleware(ok)
        messages = limiter.check_throttle_settings()
    assert any(m.id == "fastcache.E104" for m in messages)


def test_system_check_validates_failure_mode_and_keys():
    with override_settings(FASTCACHE_THROTTLE={"FAILURE_MODE": "maybe", "SPEED": 1}):
        ids = {m.id for m in limiter.check_throttle_settings()}
    assert {"fastcache.E102", "fastcache.E103"} <= ids


def test_middleware_reports_drf_throttle_decisions():
    from django_fastcache.throttling import AnonRateThrottle
    from rest_framework.response import Response
    from rest_framework.views import APIView

    throttle = type("T", (AnonRateThrottle,), {"rate": "5/min", "scope": "anon"})

    class Api(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("ok")

    with override_settings(FASTCACHE_THROTTLE={"HEADERS": True}):
        middleware = RateLimitMiddleware(Api.as_view())
        response = middleware(get())
    assert response["RateLimit-Policy"] == '"anon";q=5;w=60'
    assert response["RateLimit"] == '"anon";r=4;t=60'


def test_decorator_on_redis_through_the_cache_interface():
    with RedisServer() as srv:
        from django.core.cache import caches

        fake = FakeRedisCache(redis_client(srv.url))
        caches["default"]  # the per-thread backend exists; shadow it with the fake
        caches._connections.default = fake
        try:
            view = ratelimit(rate="2/min")(ok)
            assert [view(get()).status_code for _ in range(3)] == [200, 200, 429]
            assert any(k.startswith(b"fcrl:{rl:") for k in fake.client.keys("*"))

            @ratelimit(rate="1/min")
            async def async_view(request):
                return HttpResponse("ok")

            async def run():
                return [(await async_view(get())).status_code for _ in range(2)]

            assert asyncio.run(run()) == [200, 429]
        finally:
            del caches._connections.default
