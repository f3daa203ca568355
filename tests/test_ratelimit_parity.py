"""The plain-Django decorator and middleware: identities a client cannot mint (REMOTE_ADDR
unless proxies are trusted; IPv6 by /64), django-ratelimit's arguments (keys, callable
rates, methods, group, block, is_ratelimited, several limits in one string), the control
API (reset, peek, the switch, the blocked-response hook) and native async on Redis."""

from __future__ import annotations

import asyncio

import asgiref.sync
import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django_fastcache import limiter
from django_fastcache.ratelimit import (
    UNSAFE,
    Ratelimited,
    RateLimitMiddleware,
    get_usage,
    is_ratelimited,
    ratelimit,
    reset,
)
from throttle_support import reset_limits

LOCMEM = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(autouse=True)
def fresh():
    with override_settings(CACHES=LOCMEM):
        reset_limits()
        yield
    reset_limits()


def req(method="get", addr="1.1.1.1", path="/", data=None, user=None, **meta):
    request = getattr(RequestFactory(), method)(path, data or {}, REMOTE_ADDR=addr, **meta)
    request.user = user or AnonymousUser()
    return request


def ok(request, *args, **kwargs):
    return HttpResponse("ok")


class User:
    is_authenticated = True

    def __init__(self, pk):
        self.pk = pk


# ------------------------------------------------------------ identities (issue 11.3)

def test_rotating_x_forwarded_for_mints_no_identities():
    view = ratelimit(rate="3/m", key="ip", method="POST")(ok)
    codes = [view(req("post", HTTP_X_FORWARDED_FOR=f"198.51.100.{i}")).status_code
             for i in range(20)]
    assert codes.count(200) == 3


def test_trusted_proxies_name_the_client_and_prepended_entries_change_nothing():
    view = ratelimit(rate="1/m", key="ip")(ok)
    with override_settings(FASTCACHE_THROTTLE={"TRUSTED_PROXIES": 1}):
        assert view(req(addr="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5")).status_code == 200
        spoofed = req(addr="10.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.5")
        assert view(spoofed).status_code == 429
        other = req(addr="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.6")
        assert view(other).status_code == 200


def test_drf_num_proxies_is_the_fallback_for_trusted_proxies():
    view = ratelimit(rate="1/m", key="ip")(ok)
    with override_settings(REST_FRAMEWORK={"NUM_PROXIES": 1}):
        assert view(req(HTTP_X_FORWARDED_FOR="203.0.113.5")).status_code == 200
        assert view(req(HTTP_X_FORWARDED_FOR="203.0.113.6")).status_code == 200


def test_ipv6_clients_are_counted_by_their_64_network():
    view = ratelimit(rate="3/m", key="ip")(ok)
    codes = [view(req(addr=f"2001:db8:1:2::{i:x}")).status_code for i in range(1, 21)]
    assert codes.count(200) == 3
    assert view(req(addr="2001:db8:1:3::1")).status_code == 200  # another /64
    with override_settings(FASTCACHE_THROTTLE={"IPV6_PREFIX": 128}):
        assert view(req(addr="2001:db8:1:2::99")).status_code == 200


def test_ipv4_mapped_addresses_are_the_ipv4_client():
    view = ratelimit(rate="1/m", key="ip")(ok)
    assert view(req(addr="192.0.2.7")).status_code == 200
    assert view(req(addr="::ffff:192.0.2.7")).status_code == 429


@pytest.mark.parametrize("conf", [{"TRUSTED_PROXIES": -1}, {"TRUSTED_PROXIES": "1"},
                                  {"IPV6_PREFIX": 0}, {"IPV6_PREFIX": 200}])
def test_bad_proxy_settings_name_the_option(conf):
    view = ratelimit(rate="1/m", key="ip")(ok)
    with override_settings(FASTCACHE_THROTTLE=conf):
        with pytest.raises(ImproperlyConfigured, match=next(iter(conf))):
            view(req(addr="2001:db8::1"))


def test_system_check_warns_about_drf_throttles_without_num_proxies():
    from django_fastcache.checks import check_throttle_proxies

    classes = ["django_fastcache.throttling.AnonRateThrottle"]
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_CLASSES": classes}):
        messages = check_throttle_proxies()
    assert [m.id for m in messages] == ["fastcache.W207"]
    assert "X-Forwarded-For" in messages[0].msg and "NUM_PROXIES" in messages[0].hint
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_CLASSES": classes,
                                           "NUM_PROXIES": 0}):
        assert check_throttle_proxies() == []


# ------------------------------------------------------------- django-ratelimit's API

def group_key(group, request):
    return request.GET.get("team")


def test_keys():
    alice, bob = User(1), User(2)
    by_user = ratelimit(rate="1/m", key="user")(ok)
    assert by_user(req(user=alice)).status_code == 200
    assert by_user(req(user=alice, addr="9.9.9.9")).status_code == 429
    assert by_user(req(user=bob)).status_code == 200
    assert by_user(req()).status_code == 200  # anonymous: by address
    assert by_user(req()).status_code == 429

    by_get = ratelimit(rate="1/m", key="get:q")(ok)
    assert by_get(req(path="/?q=a")).status_code == 200
    assert by_get(req(path="/?q=b", addr="2.2.2.2")).status_code == 200
    assert by_get(req(path="/?q=a", addr="3.3.3.3")).status_code == 429

    by_post = ratelimit(rate="1/m", key="post:username")(ok)
    assert by_post(req("post", data={"username": "x"})).status_code == 200
    assert by_post(req("post", data={"username": "x"}, addr="4.4.4.4")).status_code == 429

    by_path = ratelimit(rate="1/m", key=f"{__name__}.group_key")(ok)
    assert by_path(req(path="/?team=red")).status_code == 200
    assert by_path(req(path="/?team=red")).status_code == 429
    assert by_path(req(path="/")).status_code == 200  # a None key exempts
    assert by_path(req(path="/")).status_code == 200


def test_callable_key_gets_group_and_request():
    seen = []

    def key(group, request):
        seen.append(group)
        return "k"

    view = ratelimit(rate="5/m", key=key, group="g1")(ok)
    view(req())
    assert seen == ["g1"]


def test_callable_rates_and_none():
    def rate(group, request):
        return None if request.GET.get("vip") else (1, 60)

    view = ratelimit(rate=rate, key="ip")(ok)
    assert [view(req(path="/?vip=1")).status_code for _ in range(3)] == [200] * 3
    assert [view(req()).status_code for _ in range(2)] == [200, 429]
    unlimited = ratelimit(rate=None, key="ip")(ok)
    assert [unlimited(req()).status_code for _ in range(3)] == [200] * 3


def test_methods_all_unsafe_and_lists():
    view = ratelimit(rate="1/m", key="ip", method=UNSAFE)(ok)
    assert [view(req("get")).status_code for _ in range(3)] == [200] * 3
    assert [view(req("post")).status_code, view(req("delete")).status_code] == [200, 429]
    listed = ratelimit(rate="1/m", key="ip", method=["GET", "put"], group="listed")(ok)
    assert [listed(req("put")).status_code, listed(req("get")).status_code] == [200, 429]
    assert listed(req("post")).status_code == 200


def test_group_is_shared_and_block_false_marks_the_request():
    a = ratelimit(rate="1/m", key="ip", group="shared")(ok)
    b = ratelimit(rate="1/m", key="ip", group="shared", block=False)(
        lambda request: HttpResponse(str(getattr(request, "limited", False))))
    assert a(req()).status_code == 200
    response = b(req())
    assert (response.status_code, response.content) == (200, b"True")


def test_several_limits_in_one_string():
    view = ratelimit(rate="5/m;2/h", key="ip")(ok)
    responses = [view(req()) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert int(responses[-1]["Retry-After"]) > 3000  # the hourly limit decided
    with pytest.raises(ImproperlyConfigured, match="fortnight"):
        ratelimit(rate="5/m;2/fortnight")(ok)


def test_is_ratelimited_peeks_unless_incremented_and_get_usage_reports():
    request = req()
    kwargs = {"group": "api", "key": "ip", "rate": "2/m"}
    assert is_ratelimited(request, **kwargs) is False
    assert get_usage(request, **kwargs)["count"] == 0  # a peek counts nothing
    assert is_ratelimited(request, increment=True, **kwargs) is False
    assert is_ratelimited(request, increment=True, **kwargs) is False
    assert is_ratelimited(request, increment=True, **kwargs) is True
    assert request.limited is True
    usage = get_usage(request, **kwargs)
    assert (usage["count"], usage["limit"], usage["should_limit"]) == (2, 2, True)
    assert 0 < usage["time_left"] <= 60
    reset(request, **kwargs)
    assert is_ratelimited(req(), increment=True, **kwargs) is False
    assert is_ratelimited(req(method="post"), method="GET", increment=True, **kwargs) is False


# ------------------------------------------------------------------- control API

def blocked_view(request, exception):
    return HttpResponse(f"slow down {exception.retry_after}", status=429)


class Teapot(Exception):
    pass


def test_blocked_hook_view_and_exception_class():
    view = ratelimit(rate="1/m", key="ip")(ok)
    view(req())
    with override_settings(FASTCACHE_THROTTLE={"BLOCKED": f"{__name__}.blocked_view"}):
        response = view(req())
        assert response.content == b"slow down 60" and response["Retry-After"] == "60"
    with override_settings(FASTCACHE_THROTTLE={"BLOCKED": f"{__name__}.Teapot"}):
        with pytest.raises(Teapot):
            view(req())
    with override_settings(FASTCACHE_THROTTLE={"BLOCKED": Ratelimited}):
        with pytest.raises(Ratelimited) as info:
            view(req())
    assert info.value.retry_after == 60
    own = ratelimit(rate="1/m", key="ip", group="own", blocked=Teapot)(ok)
    own(req())
    with pytest.raises(Teapot):
        own(req())


def test_middleware_uses_the_blocked_hook():
    rules = [{"path": "^/", "rate": "1/m"}]
    with override_settings(FASTCACHE_THROTTLE={"RULES": rules,
                                               "BLOCKED": f"{__name__}.blocked_view"}):
        middleware = RateLimitMiddleware(ok)
        middleware(req())
        assert middleware(req()).content == b"slow down 60"


def test_switch_turns_every_limit_off():
    view = ratelimit(rate="1/m", key="ip")(ok)
    view(req())
    limiter.set_enabled(False)
    try:
        assert [view(req()).status_code for _ in range(3)] == [200] * 3
    finally:
        limiter.set_enabled(None)
    assert view(req()).status_code == 429


def test_long_client_values_name_fixed_size_keys(clean_redis_server):
    caches = {"default": {"BACKEND": "django_fastcache.cache.FastCache",
                          "LOCATION": clean_redis_server.url, "KEY_PREFIX": "long"}}
    with override_settings(CACHES=caches):
        view = ratelimit(rate="1/m", key="header:x-api-key")(ok)
        for i in range(5):
            view(req(HTTP_X_API_KEY=f"{i}" * 8000))
    keys = clean_redis_server.client().keys("long:*")
    assert len(keys) == 5 and max(map(len, keys)) < 200


# ------------------------------------------------------------------- native async

@pytest.mark.parametrize("backend", ["django_fastcache.cache.FastCache",
                                     "django_redis.cache.RedisCache",
                                     "django.core.cache.backends.redis.RedisCache"])
def test_async_views_and_middleware_check_redis_without_a_thread(
        backend, clean_redis_server, monkeypatch):
    def no_thread(*args, **kwargs):
        raise AssertionError("checked through sync_to_async")

    monkeypatch.setattr(asgiref.sync, "sync_to_async", no_thread)
    caches = {"default": {"BACKEND": backend, "LOCATION": clean_redis_server.url,
                          "KEY_PREFIX": "async"}}
    with override_settings(CACHES=caches,
                           FASTCACHE_THROTTLE={"RULES": [{"path": "^/mw", "rate": "2/m"}]}):
        @ratelimit(rate="2/m", key="ip")
        async def view(request):
            return HttpResponse("ok")

        async def inner(request):
            return HttpResponse("ok")

        middleware = RateLimitMiddleware(inner)

        async def run():
            codes = [(await view(req())).status_code for _ in range(3)]
            codes += [(await middleware(req(path="/mw"))).status_code for _ in range(3)]
            return codes

        assert asyncio.run(run()) == [200, 200, 429, 200, 200, 429]
        # and a second event loop gets clients of its own
        assert asyncio.run(run()) == [429] * 6
    assert clean_redis_server.client().keys("async:*")


def test_async_check_with_redis_down_follows_the_failure_mode():
    from tests.redis_servers import free_port

    caches = {"default": {"BACKEND": "django_redis.cache.RedisCache",
                          "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
                          "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2}}}
    with override_settings(CACHES=caches, FASTCACHE_THROTTLE={"FAILURE_MODE": "closed"}):
        @ratelimit(rate="5/m", key="ip")
        async def view(request):
            return HttpResponse("ok")

        async def run():
            return (await view(req())).status_code

        assert asyncio.run(run()) == 429
