"""The in-process limiter table under attack and in shared use (issue 11 items 2 and 4):
rotating X-Forwarded-For identities cannot fill it against new clients, throttles sharing
a scope keep their own state, and the control calls (peek, reset of one identity) the
throttles build on."""

from __future__ import annotations

import pytest
from django.core.cache.backends.dummy import DummyCache
from django.test import override_settings
from django_fastcache import _core, limiter
from django_fastcache.throttling import AnonRateThrottle
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory
from rest_framework.views import APIView

# A cache that holds nothing: its throttles count in this process's table (the one under test).
LOCAL = DummyCache("throttle-table-tests", {})
S = 1_000_000


@pytest.fixture
def small_table(monkeypatch):
    """The throttles' process table replaced by a small one (256 KiB, 4 shards)."""
    limiter.local_limiter()
    table = _core.Limiter(256 << 10, 4)
    monkeypatch.setattr(limiter, "_local", table)
    monkeypatch.setattr(limiter, "_local_check", table.checker(limiter.Decision, "local"))
    monkeypatch.setattr(limiter, "_failure_local_check",
                        table.checker(limiter.Decision, "failure-local"))
    return table


@pytest.fixture
def fresh_limiter():
    limiter.local_limiter().clear()
    yield
    limiter.local_limiter().clear()


def anon_view(*throttles):
    class View(APIView):
        throttle_classes = throttles

        def get(self, request):
            return Response("ok")

    return View.as_view()


@override_settings(REST_FRAMEWORK={"NUM_PROXIES": None,
                                   "DEFAULT_THROTTLE_RATES": {"anon": "1000/day"}})
def test_rotating_forwarded_for_does_not_lock_out_new_clients(small_table):
    throttle = type("Anon", (AnonRateThrottle,), {"cache": LOCAL})
    view = anon_view(throttle)
    factory = APIRequestFactory()
    # Far more spoofed 8 KB identities than the table holds.
    for i in range(3000):
        xff = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}," + "x" * 8192
        assert view(factory.get("/", HTTP_X_FORWARDED_FOR=xff)).status_code == 200
    stats = small_table.stats()
    assert stats["bytes"] <= 256 << 10
    assert stats["dropped_live"] > 0 and stats["untracked"] == 0
    codes = [view(factory.get("/", REMOTE_ADDR=f"192.0.2.{c}")).status_code for c in range(200)]
    assert codes == [200] * 200


@override_settings(REST_FRAMEWORK={"NUM_PROXIES": 0,
                                   "DEFAULT_THROTTLE_RATES": {"anon": "1000/day"}})
def test_a_client_at_its_limit_stays_limited_through_a_flood(small_table):
    strict = type("Strict", (AnonRateThrottle,), {"cache": LOCAL, "rate": "3/day"})
    view = anon_view(strict)
    factory = APIRequestFactory()
    victim = factory.get("/", REMOTE_ADDR="198.51.100.7")
    assert [view(victim).status_code for _ in range(4)] == [200, 200, 200, 429]
    for i in range(5000):
        view(factory.get("/", REMOTE_ADDR=f"10.0.{i >> 8}.{i & 255}"))
    assert small_table.stats()["dropped_live"] > 0
    assert view(victim).status_code == 429


@override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": "1000/day"}})
def test_throttles_sharing_a_scope_keep_their_own_state(fresh_limiter):
    # Issue 11 item 4: the scope is inherited; the algorithm and period differ.
    default = type("Default", (AnonRateThrottle,), {"cache": LOCAL})
    strict = type("Strict", (AnonRateThrottle,), {"cache": LOCAL, "rate": "3/min",
                                                  "algorithm": "gcra"})
    view = anon_view(default, strict)
    request = APIRequestFactory().get("/", REMOTE_ADDR="203.0.113.9")
    codes = [view(request).status_code for _ in range(50)]
    assert codes.count(200) == 3


def test_entries_cost_the_same_whatever_the_identity_length():
    short, long = _core.Limiter(1 << 20, 1), _core.Limiter(1 << 20, 1)
    policy = limiter.make_policy("1000/day", name="anon")
    check_short = short.checker(limiter.Decision, "local")
    check_long = long.checker(limiter.Decision, "local")
    for i in range(100):
        assert check_short(f"throttle_anon_{i}", policy, 1, 1.0).allowed
        assert check_long(f"throttle_anon_{i}," + "x" * 8192, policy, 1, 1.0).allowed
    assert short.stats()["bytes"] == long.stats()["bytes"] < 100 * 400


def test_peek_reports_without_counting():
    table = _core.Limiter(1 << 20, 2)
    check = table.checker(limiter.Decision, "local")
    policy = limiter.make_policy("3/10s", name="anon")
    assert table.peek("k", policy, 100.0) == (True, 3, 0, 0)
    check("k", policy, 1, 100)
    check("k", policy, 1, 101.5)
    assert table.peek("k", policy, 102) == (True, 1, 0, 9_500_000)
    assert table.peek("k", policy, 102, 2) == (False, 1, 8_000_000, 9_500_000)
    assert table.peek("k", policy, 102, 4)[2] == -1  # never fits
    assert check("k", policy, 1, 102).remaining == 0  # peeks counted nothing
    assert table.peek("k", policy, 102) == (False, 0, 8_000_000, 10_000_000)
    with pytest.raises(TypeError, match="policy"):
        table.peek("k", ("not", "a", "policy"), 1.0)
    with pytest.raises(TypeError, match="key must be a str"):
        table.peek(b"k", policy, 1.0)


def test_reset_one_policy_or_every_policy_of_an_identity():
    table = _core.Limiter(1 << 20, 2)
    check = table.checker(limiter.Decision, "local")
    day = limiter.make_policy("1/day", name="anon")
    minute = limiter.make_policy("1/min", "gcra", name="anon")
    for policy in (day, minute):
        assert check("k", policy, 1, 1).allowed and not check("k", policy, 1, 1).allowed
    assert check("other", day, 1, 1).allowed
    assert table.reset("k", minute) == 1 and table.reset("k", minute) == 0
    assert check("k", minute, 1, 2).allowed and not check("k", day, 1, 2).allowed
    assert table.reset("k") == 2 and table.reset("k", None) == 0
    assert check("k", day, 1, 3).allowed
    assert not check("other", day, 1, 3).allowed  # another identity is untouched


def test_named_tables_are_one_per_name_and_clear_alone():
    first = _core.get_limiter("tests-store-a")
    assert _core.get_limiter("tests-store-a") is first
    other = _core.get_limiter("tests-store-b")
    policy = limiter.make_policy("1/day", name="anon")
    for table in (first, other):
        table.checker(limiter.Decision, "local")("k", policy, 1, 1)
    first.clear()
    assert first.peek("k", policy, 2)[0] and not other.peek("k", policy, 2)[0]


@pytest.mark.parametrize(("max_bytes", "shards", "message"), [
    (16 << 10, 32, "1024 per shard"),
    (512, 1, "1024 per shard"),
    (1 << 20, 0, "shards must be between 1 and 1024"),
])
def test_a_table_too_small_to_keep_state_is_refused(max_bytes, shards, message):
    with pytest.raises(ValueError, match=message):
        _core.Limiter(max_bytes, shards)
    with pytest.raises(ValueError, match=message):
        _core.get_limiter("tests-too-small", max_bytes, shards)
