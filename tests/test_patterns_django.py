"""Model-driven invalidation with real transactions, sessions on FastCache (embedded and
Redis), the management commands and the system checks."""

from __future__ import annotations

import json
import time
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core import checks
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client, override_settings
from django.urls import path
from django_fastcache import checks as fc_checks
from django_fastcache.decorators import cached
from django_fastcache.invalidation import invalidate_on_change

_n = iter(range(10**6))


@pytest.fixture(params=["embedded", "redis"])
def cache(request):
    if request.param == "embedded":
        conf = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": f"pd-{next(_n)}"}
    else:
        server = request.getfixturevalue("clean_redis_server")
        # The patterns count Redis round trips: the coherent L1 is tested on its own.
        conf = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": server.url + "/1",
                "KEY_PREFIX": "pd", "OPTIONS": {"L1": False}}
    with override_settings(CACHES={"default": conf}):
        yield caches["default"]


@pytest.fixture
def user_hook():
    hook = invalidate_on_change(User, tags=["users", "user:{pk}"])
    yield hook
    hook.disconnect()


def _cached_username():
    calls = []

    @cached(tags=["user:{pk}"])
    def username(pk):
        calls.append(pk)
        return User.objects.get(pk=pk).username

    return username, calls


# ---------------------------------------------------------------------- invalidate_on_change

@pytest.mark.django_db
def test_save_invalidates_after_commit_not_before(cache, user_hook,
                                                  django_capture_on_commit_callbacks):
    user = User.objects.create(username="ann")
    username, calls = _cached_username()
    assert username(user.pk) == "ann"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        user.username = "anna"
        user.save()
        # Inside the transaction that wrote: its own write, computed and not cached.
        assert username(user.pk) == "anna"
    assert len(callbacks) >= 1
    assert username(user.pk) == "anna"
    assert calls == [user.pk, user.pk, user.pk]


@pytest.mark.django_db(transaction=True)
def test_real_commit_invalidates_and_rollback_does_not(cache, user_hook):
    user = User.objects.create(username="bob")
    username, calls = _cached_username()
    assert username(user.pk) == "bob"
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            User.objects.filter(pk=user.pk).update(username="never")
            user.username = "never"
            user.save()
            raise RuntimeError("roll back")
    assert username(user.pk) == "bob" and len(calls) == 1  # rolled back: still cached
    with transaction.atomic():
        user.username = "bobby"
        user.save()
        assert username(user.pk) == "bobby"  # its own write, uncached
    assert username(user.pk) == "bobby" and len(calls) == 3
    assert username(user.pk) == "bobby" and len(calls) == 3


@pytest.mark.django_db(transaction=True)
def test_delete_invalidates(cache, user_hook):
    user = User.objects.create(username="carl")
    cache.set("listing", ["carl"], tags=["users"])
    user.delete()
    assert cache.get("listing") is None


@pytest.mark.django_db(transaction=True)
def test_m2m_changes_on_either_side_invalidate(cache):
    hook = invalidate_on_change(User, tags=lambda u: [f"groups-of:{u.pk}"])
    try:
        user = User.objects.create(username="dora")
        other = User.objects.create(username="eve")
        group = Group.objects.create(name="editors")

        def fill():
            cache.set("dora", 1, tags=[f"groups-of:{user.pk}"])
            cache.set("eve", 1, tags=[f"groups-of:{other.pk}"])

        fill()
        user.groups.add(group)                # forward add
        assert cache.get("dora") is None and cache.get("eve") == 1
        fill()
        group.user_set.add(other)             # reverse add: pk_set names the users
        assert cache.get("eve") is None and cache.get("dora") == 1
        fill()
        group.user_set.remove(user)           # reverse remove
        assert cache.get("dora") is None and cache.get("eve") == 1
        fill()
        group.user_set.clear()                # reverse clear: rows read before clearing
        assert cache.get("eve") is None and cache.get("dora") == 1
        fill()
        user.groups.add(group)
        fill()
        user.groups.clear()                   # forward clear
        assert cache.get("dora") is None and cache.get("eve") == 1
    finally:
        hook.disconnect()


@pytest.mark.django_db(transaction=True)
def test_disconnect_stops_invalidation(cache):
    hook = invalidate_on_change(Group, tags="groups")
    cache.set("g", 1, tags=["groups"])
    hook.disconnect()
    Group.objects.create(name="x")
    assert cache.get("g") == 1


def test_invalidate_on_change_validates_its_arguments(cache):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="'nope' is not in CACHES"):
        invalidate_on_change(User, tags="x", cache="nope")
    with pytest.raises(ValueError, match="at least one tag"):
        invalidate_on_change(User, tags=[])


# ---------------------------------------------------------------------- sessions

def _session_view(request):
    from django.http import JsonResponse

    request.session["n"] = request.session.get("n", 0) + 1
    return JsonResponse({"n": request.session["n"]})


urlpatterns = [path("s/", _session_view)]
SESSION_MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]


@pytest.mark.parametrize("engine", ["cache", "cached_db"])
@pytest.mark.django_db
def test_sessions_on_fastcache(cache, engine):
    from importlib import import_module

    with override_settings(SESSION_ENGINE=f"django.contrib.sessions.backends.{engine}",
                           MIDDLEWARE=SESSION_MIDDLEWARE, ROOT_URLCONF=__name__):
        client = Client()
        assert [client.get("/s/").json()["n"] for _ in range(3)] == [1, 2, 3]
        key = client.cookies["sessionid"].value
        store = import_module(f"django.contrib.sessions.backends.{engine}").SessionStore
        assert store(key).load() == {"n": 3}
        assert store(key).exists(key)
        # A fresh client has its own session; the old one is intact.
        assert Client().get("/s/").json()["n"] == 1
        s = store(key)
        s.cycle_key()
        assert s.session_key != key and store(s.session_key).load() == {"n": 3}
        assert not store(key).exists(key)
        s.delete()
        assert store(s.session_key).load() == {}
        if engine == "cached_db":  # the database has it even when the cache lost it
            fresh = store()
            fresh["x"] = 1
            fresh.save()
            cache.clear()
            assert store(fresh.session_key).load() == {"x": 1}


@pytest.mark.django_db
def test_session_expiry_follows_the_cache_timeout(cache):
    from django.contrib.sessions.backends.cache import SessionStore

    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache"):
        s = SessionStore()
        s["a"] = 1
        s.set_expiry(100)
        s.save()
        ttl = cache.ttl(s.cache_key)
        assert 95 <= ttl <= 100


# ---------------------------------------------------------------------- commands

def test_fastcache_stats_table_and_json(cache):
    cache.set("a", 1)
    cache.get("a")
    cache.get("missing")
    out = StringIO()
    call_command("fastcache_stats", "--json", stdout=out)
    rows = json.loads(out.getvalue())
    assert [r["alias"] for r in rows] == ["default"]
    row = rows[0]
    if row["tier"] == "l1":
        assert row["l1_hits"] == 1 and row["l1_misses"] == 1 and row["entries"] == 1
        assert row["l1_hit_ratio"] == 0.5
    else:
        assert row["tier"] == "redis"
        assert row["redis_hits"] == 1 and row["redis_misses"] == 1
        assert row["redis_keys"] == 1 and row["errors"] == 0 and row["breaker_state"] == "closed"
    out = StringIO()
    call_command("fastcache_stats", stdout=out)
    text = out.getvalue()
    assert "default" in text and "hit ratio" in text and "50.0%" in text
    # Figures no listed tier has are left out: the breaker exists only with Redis.
    assert ("breaker state" in text) == (row["tier"] == "redis")
    with pytest.raises(CommandError, match="no cache alias 'nope'"):
        call_command("fastcache_stats", "nope")


def test_fastcache_stats_shows_the_coherent_l1_in_front_of_redis(clean_redis_server):
    conf = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": clean_redis_server.url,
            "KEY_PREFIX": "st"}
    with override_settings(CACHES={"default": conf}):
        cache = caches["default"]
        cache.set("a", 1)
        deadline = time.monotonic() + 5  # the listener starts with the first call
        while cache.stats()["l1_listener"] != "up" and time.monotonic() < deadline:
            cache.get("a")
            time.sleep(0.01)
        before = cache.stats()
        for _ in range(3):
            cache.get("a")
        out = StringIO()
        call_command("fastcache_stats", "--json", stdout=out)
        row = json.loads(out.getvalue())[0]
        assert row["tier"] == "l1+redis"
        assert row["l1_listener"] == "up"
        lookups = row["l1_hits"] + row["l1_misses"] - before["l1_hits"] - before["l1_misses"]
        assert lookups == 3
        out = StringIO()
        call_command("fastcache_stats", stdout=out)
        text = out.getvalue()
        assert "L1 listener" in text and "L1 resets" in text and "Redis hits" in text


def test_fastcache_keys_lists_matching_keys_with_ttls(cache):
    cache.set("post:1", 1, timeout=100)
    cache.set("post:2", 2, timeout=None)
    cache.set("user:1", 3)
    out = StringIO()
    call_command("fastcache_keys", "post:*", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split("\t")[0] == "post:1" and lines[0].split("\t")[1] in ("100s", "99s")
    assert lines[1] == "post:2\tnever"
    assert lines[2].startswith("2 key(s) matching 'post:*' in 'default'")
    out = StringIO()
    call_command("fastcache_keys", "--json", "--limit", "1", stdout=out)
    data = json.loads(out.getvalue())
    assert data["total"] == 3 and len(data["keys"]) == 1
    with pytest.raises(CommandError, match="not a FastCache"):
        with override_settings(CACHES={"default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}):
            call_command("fastcache_keys", stdout=StringIO())


# ---------------------------------------------------------------------- system checks

def _ids(messages) -> list[str]:
    return sorted(m.id for m in messages)


def test_check_redis_without_key_prefix(redis_server):
    conf = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": redis_server.url}
    with override_settings(CACHES={"default": conf}):
        assert _ids(fc_checks.check_caches()) == ["fastcache.W201"]
    with override_settings(CACHES={"default": {**conf, "KEY_PREFIX": "site"}}):
        assert fc_checks.check_caches() == []
    with override_settings(CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache"}}):
        assert fc_checks.check_caches() == []


def test_check_sessions_on_a_per_process_cache(redis_server):
    embedded = {"default": {"BACKEND": "django_fastcache.cache.FastCache"}}
    with override_settings(CACHES=embedded,
                           SESSION_ENGINE="django.contrib.sessions.backends.cache"):
        assert _ids(fc_checks.check_sessions()) == ["fastcache.W203"]
    with override_settings(CACHES=embedded,
                           SESSION_ENGINE="django.contrib.sessions.backends.cached_db"):
        assert fc_checks.check_sessions() == []
    with override_settings(CACHES=embedded, SESSION_CACHE_ALIAS="sessions",
                           SESSION_ENGINE="django.contrib.sessions.backends.cache"):
        assert _ids(fc_checks.check_sessions()) == ["fastcache.E202"]
    shared = {"default": {"BACKEND": "django_fastcache.cache.FastCache",
                          "LOCATION": redis_server.url, "KEY_PREFIX": "s"}}
    with override_settings(CACHES=shared,
                           SESSION_ENGINE="django.contrib.sessions.backends.cache"):
        assert fc_checks.check_sessions() == []



def test_check_throttles_on_caches_not_shared():
    from django.core.cache.backends.dummy import DummyCache
    from django.core.cache.backends.locmem import LocMemCache
    from django_fastcache.cache import FastCache
    from django_fastcache.throttling import AnonRateThrottle
    from rest_framework.throttling import AnonRateThrottle as DrfAnon

    global DrfOnLocMem, DrfOnDummy, OursOnEmbedded

    class DrfOnLocMem(DrfAnon):
        cache = LocMemCache("chk", {})

    class DrfOnDummy(DrfAnon):
        cache = DummyCache("chk", {})

    class OursOnEmbedded(AnonRateThrottle):
        cache = FastCache("chk", {})

    rest = {"DEFAULT_THROTTLE_CLASSES": [
        f"{__name__}.DrfOnLocMem", f"{__name__}.DrfOnDummy", f"{__name__}.OursOnEmbedded",
        "rest_framework.throttling.UserRateThrottle",
        "django_fastcache.throttling.UserRateThrottle"]}
    with override_settings(REST_FRAMEWORK=rest, CACHES={"default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}):
        messages = fc_checks.check_throttle_caches()
    assert _ids(messages) == ["fastcache.E204", "fastcache.I206", "fastcache.W205",
                              "fastcache.W205"]
    assert any("DrfOnDummy" in m.msg and "never throttles" in m.msg for m in messages)


def test_checks_are_registered_with_django():
    registered = {f.__name__ for f in checks.registry.registry.get_checks()}
    assert {"check_caches", "check_sessions", "check_throttle_caches"} <= registered
