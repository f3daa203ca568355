"""The throttles' fused per-request path (Limiter.throttle_fastpath): taken only for
classes whose per-request methods are ours, and deciding exactly as the Python path on
random requests (X-Forwarded-For chains, NUM_PROXIES 0..3 and None, anonymous and
authenticated users), including after the class, its rates or the instance change."""

from __future__ import annotations

import random

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.test import APIRequestFactory
from throttle_support import reset_limits

from django_fastcache import limiter, throttling


class User:
    is_authenticated = True

    def __init__(self, pk):
        self.pk = pk


@pytest.fixture(autouse=True)
def fresh():
    reset_limits()
    yield
    reset_limits()
    # Tests assign these on api_settings; reload() forgets only what it cached itself.
    for name in ("NUM_PROXIES", "DEFAULT_THROTTLE_RATES"):
        api_settings.__dict__.pop(name, None)
        api_settings._cached_attrs.discard(name)
    api_settings.reload()


def clocked(base, **attrs):
    clock = [1_699_920_000.0]
    attrs.setdefault("timer", lambda self: clock[0])
    return type("T", (base,), attrs), clock


def python_path(cls):
    # Same behaviour, but an overridden per-request method: never a spec.
    return type("Py", (cls,), {"get_cost": lambda self, request, view: self.cost})


def request_with(meta, user):
    request = Request(APIRequestFactory().get("/", **meta))
    request.user = user
    return request


def random_meta(rng):
    meta = {"REMOTE_ADDR": rng.choice(["10.0.0.1", "10.0.0.2", "::1"])}
    if rng.random() < 0.7:
        addrs = [f"1.0.0.{rng.randrange(3)}"
                 for _ in range(rng.randrange(1, 5))]
        seps = [rng.choice([",", ", ", " ,", ",\t"]) for _ in addrs[1:]]
        xff = addrs[0] + "".join(s + a for s, a in zip(seps, addrs[1:]))
        meta["HTTP_X_FORWARDED_FOR"] = rng.choice([xff, " " + xff + " ", ""])
    return meta


def test_an_eligible_class_gets_a_spec_and_the_fused_path():
    cls, _ = clocked(throttling.AnonRateThrottle, rate="5/min")
    cls()
    spec = throttling._specs[cls]
    assert len(spec) == 10  # register_limiter.cpp's kSpecSize
    assert spec[1:3] == (throttling._MODE_ANON, "5/min") and spec[6] == "throttle_anon_"
    throttle = cls()
    assert throttle.rate == "5/min" and (throttle.num_requests, throttle.duration) == (5, 60)
    assert throttling._fast_allow(throttle, request_with({"REMOTE_ADDR": "1.2.3.4"},
                                                         AnonymousUser())) is True
    assert throttle.key == "throttle_anon_1.2.3.4"
    assert throttle.decision.remaining == 4 and throttle.wait() == 0.0


@pytest.mark.parametrize("override", [
    {"get_ident": lambda self, request: "x"},
    {"cache_format": "t:%(scope)s:%(ident)s"},
    {"throttle_failure": lambda self: False},
    {"cost": 2.0},
])
def test_classes_with_methods_of_their_own_take_the_python_path(override):
    cls, _ = clocked(throttling.AnonRateThrottle, rate="5/min", **override)
    cls()
    assert cls not in throttling._specs
    assert throttling._fast_allow(cls(), request_with({}, AnonymousUser())) is None


@pytest.mark.parametrize("base", [throttling.AnonRateThrottle, throttling.UserRateThrottle])
@pytest.mark.parametrize("num_proxies", [None, 0, 1, 2, 3])
def test_fused_and_python_paths_agree_on_random_requests(base, num_proxies):
    rng = random.Random(f"{base.__name__}{num_proxies}")
    api_settings.NUM_PROXIES = num_proxies  # as DRF's tests set it: read per request
    fast, clock = clocked(base, rate="2/10s")
    slow = python_path(fast)
    requests = []
    for _ in range(150):
        user = rng.choice([AnonymousUser(), AnonymousUser(), User(rng.randrange(3)), None])
        requests.append((request_with(random_meta(rng), user), rng.choice([0.0, 0.0, 0.5, 4.0])))

    def run(cls):
        clock[0] = 1_699_920_000.0
        reset_limits()
        out = []
        for request, step in requests:
            clock[0] += step
            throttle = cls()
            out.append((throttle.allow_request(request, None), throttle.__dict__.get("key"),
                        throttle.decision, throttle.wait()))
        return out

    fused, python = run(fast), run(slow)
    assert fast in throttling._specs and slow not in throttling._specs
    assert fused == python
    assert sum(1 for allowed, *_ in fused if not allowed) > 3  # denials were exercised


def test_changes_to_the_class_rates_and_instance_are_honoured():
    cls, clock = clocked(throttling.AnonRateThrottle, scope="fz", THROTTLE_RATES={"fz": "1/min"})
    request = request_with({"REMOTE_ADDR": "9.9.9.9"}, AnonymousUser())
    assert cls().allow_request(request, None) is True
    assert cls().allow_request(request, None) is False
    cls.THROTTLE_RATES["fz"] = "3/min"  # in place
    assert cls().num_requests == 3 and cls().allow_request(request, None) is True
    cls.rate = "1/min"  # on the class: its version tag changes
    assert cls().allow_request(request, None) is False
    cls.timer = lambda self: clock[0] + 3600
    assert cls().allow_request(request, None) is True
    throttle = cls()
    throttle.get_ident = lambda request: "someone-else"  # on the instance
    assert throttle.allow_request(request, None) is True and throttle.key.endswith("someone-else")


def test_default_rates_follow_api_settings_and_none_disables():
    cls, _ = clocked(throttling.AnonRateThrottle)
    request = request_with({"REMOTE_ADDR": "8.8.8.8"}, AnonymousUser())
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": "1/min"}}):
        assert [cls().allow_request(request, None) for _ in range(2)] == [True, False]
        assert cls in throttling._specs
        api_settings.DEFAULT_THROTTLE_RATES = {"anon": None}
        throttle = cls()
        assert throttle.rate is None and throttle.allow_request(request, None) is True
        assert "key" not in throttle.__dict__ and throttle.wait() is None
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": None}}):
        throttle = cls()
        assert throttle.allow_request(request, None) is True and throttle.decision is None


def test_authenticated_users_pass_the_anon_throttle_and_key_the_user_throttle():
    anon, _ = clocked(throttling.AnonRateThrottle, rate="1/min")
    user, _ = clocked(throttling.UserRateThrottle, rate="1/min")
    request = request_with({"REMOTE_ADDR": "7.7.7.7"}, User(42))
    throttle = anon()
    assert throttle.allow_request(request, None) is True and throttle.key is None
    throttle = user()
    assert throttle.allow_request(request, None) is True and throttle.key == "throttle_user_42"
    assert user().allow_request(request, None) is False


def test_a_non_str_forwarded_for_is_left_to_the_python_path():
    cls, _ = clocked(throttling.AnonRateThrottle, rate="5/min")
    cls()
    request = request_with({"REMOTE_ADDR": "6.6.6.6"}, AnonymousUser())
    request._request.META["HTTP_X_FORWARDED_FOR"] = b"1.1.1.1"
    assert throttling._fast_allow(cls(), request) is None
    api_settings.NUM_PROXIES = 1
    with pytest.raises(TypeError):  # what the Python path does with bytes
        cls().allow_request(request, None)
