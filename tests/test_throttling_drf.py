"""DRF's own throttling scenarios (anon vs user vs scoped, wait() and Retry-After values,
NUM_PROXIES and X-Forwarded-For spoofing, non-throttled views) with our classes, on the
in-process table and a fake timer, plus rate parsing and configuration errors."""

from __future__ import annotations

import pytest
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.test import override_settings
from django_fastcache import limiter
from django_fastcache.throttling import (
    AnonRateThrottle,
    ScopedRateThrottle,
    SimpleRateThrottle,
    UserRateThrottle,
)
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView
from throttle_support import FakeEmbeddedCache, reset_limits

LOCAL = LocMemCache("throttle-tests", {})  # not a FastCache: DRF's algorithm on it


class User:
    """An authenticated user as the throttles see it (no database needed)."""

    is_authenticated = True
    is_active = True
    _next = [0]

    def __init__(self, username):
        self._next[0] += 1
        self.pk = self._next[0]
        self.username = username


@pytest.fixture(autouse=True)
def fresh_limiter():
    # DRF's tests reset throttles with cache.clear(); the state lives in that cache.
    LOCAL.clear()
    reset_limits()
    yield
    LOCAL.clear()
    reset_limits()


class Clock:
    """A fake timer shared by a set of throttle classes (DRF's tests patch `timer`)."""

    def __init__(self, *classes):
        self.now = 0.0
        for cls in classes:
            cls.timer = lambda _self, clock=self: clock.now


def make(base, **attrs):
    attrs.setdefault("cache", LOCAL)
    return type(f"{base.__name__}Sub", (base,), attrs)


def test_requests_are_throttled_and_expire():
    throttle = make(UserRateThrottle, rate="3/sec", scope="seconds")
    clock = Clock(throttle)

    class View(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    codes = [View.as_view()(request).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    clock.now = 1
    assert View.as_view()(request).status_code == 200


def test_throttling_is_per_user():
    throttle = make(UserRateThrottle, rate="3/sec", scope="seconds")
    Clock(throttle)

    class View(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    request.user = User(username="a")
    for _ in range(3):
        View.as_view()(request)
    request.user = User(username="b")
    assert View.as_view()(request).status_code == 200


def test_multiple_throttles_all_see_each_request():
    sec = make(UserRateThrottle, rate="3/sec", scope="seconds")
    minute = make(UserRateThrottle, rate="6/min", scope="minutes")
    clock = Clock(sec, minute)

    class View(APIView):
        throttle_classes = (sec, minute)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    for _ in range(4):
        response = View.as_view()(request)
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    clock.now = 1
    for _ in range(2):
        assert View.as_view()(request).status_code == 200
    response = View.as_view()(request)
    assert (response.status_code, response["Retry-After"]) == (429, "59")
    clock.now = 2
    response = View.as_view()(request)
    assert (response.status_code, response["Retry-After"]) == (429, "58")


def test_wait_is_the_longest_wait_among_failed_throttles():
    sec = make(UserRateThrottle, rate="3/sec", scope="seconds")
    minute = make(UserRateThrottle, rate="6/min", scope="minutes")
    Clock(sec, minute)

    class View(APIView):
        throttle_classes = (sec, minute)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    for _ in range(24):
        response = View.as_view()(request)
    assert (response.status_code, response["Retry-After"]) == (429, "60")


@pytest.mark.parametrize(("rate", "expected"), [("1/2-sec", "2"), ("1/2s", "2"), ("3/min", "60"),
                                                ("3/sec", "1"), ("2/15m", "900")])
def test_retry_after_matches_the_period(rate, expected):
    throttle = make(UserRateThrottle, rate=rate, scope="x")
    Clock(throttle)

    class View(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    limit = int(rate.split("/")[0])
    responses = [View.as_view()(request) for _ in range(limit + 1)]
    assert ["Retry-After" in r for r in responses] == [False] * limit + [True]
    assert responses[-1]["Retry-After"] == expected


def test_next_rate_remains_constant_if_followed():
    throttle = make(UserRateThrottle, rate="3/min", scope="minutes")
    clock = Clock(throttle)

    class View(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    for t in (0, 20, 40, 60, 80):
        clock.now = t
        assert "Retry-After" not in View.as_view()(request)


def test_non_rate_throttle_is_untouched():
    class Once:
        called = False

        def allow_request(self, request, view):
            first = not Once.called
            Once.called = True
            return first

        def wait(self):
            return None

    class View(APIView):
        throttle_classes = (Once,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    assert View.as_view()(request).status_code == 200
    response = View.as_view()(request)
    assert response.status_code == 429 and "Retry-After" not in response


def scoped_views():
    class XY(ScopedRateThrottle):
        cache = LOCAL
        THROTTLE_RATES = {"x": "3/min", "y": "1/min"}

    clock = Clock(XY)

    def view(scope):
        class V(APIView):
            throttle_classes = (XY,)
            if scope:
                throttle_scope = scope

            def get(self, request):
                return Response("ok")

        return V.as_view()

    return clock, view("x"), view("y"), view(None)


def test_scoped_rate_throttle():
    clock, x, y, _ = scoped_views()
    request = APIRequestFactory().get("/")
    for _ in range(2):
        for expected in (200, 200, 200, 429):
            assert x(request).status_code == expected
            clock.now += 1
        for expected in (200, 429):
            assert y(request).status_code == expected
            clock.now += 1
        clock.now += 55


def test_unscoped_view_not_throttled():
    clock, _, _, unscoped = scoped_views()
    request = APIRequestFactory().get("/")
    for _ in range(10):
        clock.now += 1
        assert unscoped(request).status_code == 200


def test_scoped_cache_key_for_an_authenticated_user():
    class DummyView:
        throttle_scope = "user"

    throttle = make(ScopedRateThrottle)()
    request = Request(HttpRequest())
    user = User(username="test")
    force_authenticate(request, user)
    request.user = user
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"user": "5/min"}}):
        assert throttle.allow_request(request, DummyView())
        assert throttle.get_cache_key(request, DummyView()) == f"throttle_user_{user.pk}"


def test_anon_throttle_skips_authenticated_users_and_keys_on_address():
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": "5/min"}}):
        throttle = make(AnonRateThrottle)()
        request = Request(HttpRequest())
        assert throttle.get_cache_key(request, view={}) == "throttle_anon_None"
        user = User(username="test")
        force_authenticate(request, user)
        request.user = user
        assert throttle.get_cache_key(request, view={}) is None


class XffBase:
    @pytest.fixture(autouse=True)
    def setup(self):
        class Throttle(ScopedRateThrottle):
            cache = LOCAL
            THROTTLE_RATES = {"test_limit": "1/day"}

        Clock(Throttle)

        class View(APIView):
            throttle_classes = (Throttle,)
            throttle_scope = "test_limit"

            def get(self, request):
                return Response("test_limit")

        self.view = View.as_view()
        self.request = APIRequestFactory().get("/some_uri")
        self.request.META["REMOTE_ADDR"] = "3.3.3.3"
        self.request.META["HTTP_X_FORWARDED_FOR"] = "0.0.0.0, 1.1.1.1, 2.2.2.2"
        yield
        # reload() forgets only attributes it cached itself, not one set by proxies().
        api_settings.__dict__.pop("NUM_PROXIES", None)
        api_settings.reload()

    def proxies(self, n):
        api_settings.NUM_PROXIES = n


class TestXff(XffBase):
    def test_limit_applies_without_proxies(self):
        self.proxies(0)
        assert self.view(self.request).status_code == 200
        assert self.view(self.request).status_code == 429

    @pytest.mark.parametrize(("n", "spoofed"), [(1, "4.4.4.4, 5.5.5.5, 2.2.2.2"),
                                                (2, "4.4.4.4, 1.1.1.1, 2.2.2.2")])
    def test_spoofed_xff_does_not_mint_identities(self, n, spoofed):
        self.proxies(n)
        self.view(self.request)
        self.request.META["HTTP_X_FORWARDED_FOR"] = spoofed
        assert self.view(self.request).status_code == 429

    @pytest.mark.parametrize(("n", "other"), [(1, "0.0.0.0, 1.1.1.1, 7.7.7.7"),
                                              (2, "0.0.0.0, 7.7.7.7, 2.2.2.2")])
    def test_distinct_clients_are_counted_apart(self, n, other):
        self.proxies(n)
        self.view(self.request)
        self.request.META["HTTP_X_FORWARDED_FOR"] = other
        assert self.view(self.request).status_code == 200


# ----------------------------------------------------------------- configuration errors

def test_missing_scope_or_rate_raises_like_drf():
    class NoScope(SimpleRateThrottle):
        pass

    with pytest.raises(ImproperlyConfigured, match="You must set either"):
        NoScope()
    with pytest.raises(ImproperlyConfigured, match="No default throttle rate set for 'nope'"):
        make(SimpleRateThrottle, scope="nope")()


def test_rate_none_disables_and_key_none_skips():
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": None}}):
        throttle = make(AnonRateThrottle)()
        assert throttle.parse_rate(None) == (None, None)
        assert throttle.allow_request(request={}, view={}) is True
    throttle = make(SimpleRateThrottle, rate="1/s")()
    throttle.get_cache_key = lambda *args: None
    assert throttle.allow_request(request={}, view={}) is True


@pytest.mark.parametrize("rate", ["100/fortnight", "ten/min", "100", "100/0s", "1/min/2"])
def test_invalid_rate_names_scope_and_string(rate):
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"burst": rate}}):
        with pytest.raises(ImproperlyConfigured) as info:
            make(UserRateThrottle, scope="burst")()
    assert "'burst'" in str(info.value) and repr(rate) in str(info.value)


@pytest.mark.parametrize(("rate", "parsed"), [
    ("10/s", (10, 1)), ("100/minute", (100, 60)), ("100/15m", (100, 900)),
    ("5/10s", (5, 10)), ("1000/day", (1000, 86400)), ("3/hour", (3, 3600)),
    ("1/2-sec", (1, 2)), (" 7 / 2 h ", (7, 7200)),
])
def test_rate_grammar(rate, parsed):
    assert make(UserRateThrottle, rate=rate)().parse_rate(rate) == parsed


def test_algorithm_and_burst_are_validated():
    with pytest.raises(ImproperlyConfigured, match="unknown algorithm 'leaky'"):
        make(UserRateThrottle, rate="5/m", algorithm="leaky")()
    with pytest.raises(ImproperlyConfigured, match="burst"):
        make(UserRateThrottle, rate="5/m", algorithm="gcra", burst=6)()
    with pytest.raises(ImproperlyConfigured, match="gcra"):
        make(UserRateThrottle, rate="5/m", burst=2)()


class BadlyConfigured(UserRateThrottle):
    """Module level, so the system check can name it (its rate is broken by the test)."""

    rate = "5/min"
    cache = LOCAL


def test_system_check_reports_bad_rates_and_per_process_mode():
    from django_fastcache.throttling import check_throttle_classes

    BadlyConfigured.rate = "5/fortnight"
    try:
        rest = {"DEFAULT_THROTTLE_RATES": {"anon": "7/eon"},
                "DEFAULT_THROTTLE_CLASSES": ["django_fastcache.throttling.AnonRateThrottle"]}
        with override_settings(REST_FRAMEWORK=rest, CACHES={"default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}):
            messages = limiter.check_throttle_settings() + check_throttle_classes()
        text = "\n".join(f"{m.id}: {m.msg}" for m in messages)
        assert "fastcache.E105" in text and "'7/eon'" in text
        assert "fastcache.E106" in text and "BadlyConfigured" in text and "'5/fortnight'" in text
        assert "fastcache.I101" in text
    finally:
        BadlyConfigured.rate = "5/min"  # keep later checks in this process clean


def test_cost_is_spent_per_request():
    throttle = make(UserRateThrottle, rate="10/min", cost=4)
    Clock(throttle)

    class View(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    assert [View.as_view()(request).status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("algorithm", ["sliding_log", "gcra", "sliding_window", "fixed_window"])
def test_every_algorithm_drives_drf_throttled_responses(algorithm):
    throttle = make(AnonRateThrottle, rate="5/min", algorithm=algorithm,
                    cache=FakeEmbeddedCache())
    clock = Clock(throttle)
    clock.now = 1_699_920_000.0

    class View(APIView):
        throttle_classes = (throttle,)

        def get(self, request):
            return Response("foo")

    request = APIRequestFactory().get("/")
    responses = [View.as_view()(request) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    # The sliding window's estimate still counts the full window for part of the next.
    longest = 120 if algorithm == "sliding_window" else 60
    assert 1 <= int(responses[-1]["Retry-After"]) <= longest
