"""RequestContextMiddleware: request id, user id, method and path on every line of a request
(sync and async views, threads and asyncio tasks never mixed) and one access-log line."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from types import SimpleNamespace

import pytest
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.urls import path
from django_fastcache.log import (
    JsonFormatter,
    RequestContextMiddleware,
    get_request_context,
    log_event,
)

app_log = logging.getLogger("ctxtest.app")


def sync_view(request, n):
    app_log.info("sync start %s", n)
    # Let other requests interleave before the second line.
    threading.Event().wait(0.002)
    app_log.info("sync end %s", n)
    return HttpResponse("ok")


async def async_view(request, n):
    app_log.info("async start %s", n)
    await asyncio.sleep(0.002)
    log_event("async.event", {"n": n}, logger="ctxtest.app")
    return HttpResponse("ok")


# The concurrent async test's barrier: every request waits until all have started, so they
# really overlap however slow the machine is.
_gate: dict = {}


async def gated_view(request, n):
    app_log.info("async start %s", n)
    _gate["started"] += 1
    if _gate["started"] == _gate["expected"]:
        _gate["event"].set()
    await asyncio.wait_for(_gate["event"].wait(), 10)
    log_event("async.event", {"n": n}, logger="ctxtest.app")
    return HttpResponse("ok")


def failing_view(request):
    raise RuntimeError("view failed")


urlpatterns = [
    path("sync/<int:n>/", sync_view),
    path("async/<int:n>/", async_view),
    path("gated/<int:n>/", gated_view),
    path("fail/", failing_view),
]


class FakeAuthMiddleware:
    """Stands in for AuthenticationMiddleware: the user id comes from a request header."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        uid = request.headers.get("X-Test-User")
        user = SimpleNamespace(is_authenticated=uid is not None, pk=int(uid) if uid else None)
        request.user = user

        async def auser():
            return user

        request.auser = auser
        return self.get_response(request)  # a coroutine when the chain is async


MIDDLEWARE = [f"{__name__}.FakeAuthMiddleware", "django_fastcache.log.RequestContextMiddleware"]


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[dict] = []
        self.setFormatter(JsonFormatter("%(name)s %(message)s"))

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines():
    handler = ListHandler()
    loggers = [logging.getLogger(n) for n in ("ctxtest.app", "django_fastcache.access")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield handler.lines
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


settings_for_tests = override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE)


@settings_for_tests
def test_sync_request_lines_carry_context_and_the_access_line(lines):
    response = Client().get("/sync/1/", headers={"X-Request-ID": "req-abc", "X-Test-User": "5"})
    assert response["X-Request-ID"] == "req-abc"
    app, access = [ln for ln in lines if ln["name"] == "ctxtest.app"], lines[-1]
    assert len(app) == 2
    for line in app + [access]:
        assert line["request_id"] == "req-abc"
        assert line["user_id"] == 5
        assert line["method"] == "GET" and line["path"] == "/sync/1/"
    assert access["name"] == "django_fastcache.access"
    assert access["status"] == 200 and access["duration_ms"] >= 0
    assert access["message"] == '"GET /sync/1/" 200'
    assert get_request_context() == {}


@settings_for_tests
def test_bad_or_missing_request_ids_are_replaced(lines):
    first = Client().get("/sync/1/")
    second = Client().get("/sync/1/", headers={"X-Request-ID": "bad id\n" + "x" * 300})
    ids = {first["X-Request-ID"], second["X-Request-ID"]}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)


@settings_for_tests
def test_failing_view_still_logs_status_500(lines):
    client = Client(raise_request_exception=False)
    logging.getLogger("django.request").disabled = True
    try:
        response = client.get("/fail/")
    finally:
        logging.getLogger("django.request").disabled = False
    assert response.status_code == 500
    assert lines[-1]["status"] == 500 and lines[-1]["request_id"] == response["X-Request-ID"]


@settings_for_tests
def test_concurrent_threads_never_see_each_others_context(lines):
    barrier = threading.Barrier(8)
    errors = []

    def worker(i):
        try:
            barrier.wait(timeout=5)
            Client().get(f"/sync/{i}/", headers={"X-Request-ID": f"t-{i}", "X-Test-User": str(i)})
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors
    app = [ln for ln in lines if ln["name"] == "ctxtest.app"]
    assert len(app) == 16
    for line in app:
        n = line["message"].split()[-1]
        assert line["request_id"] == f"t-{n}" and line["user_id"] == int(n)


@settings_for_tests
def test_concurrent_async_requests_never_see_each_others_context(lines):
    client = AsyncClient()

    async def one(i):
        return await client.get(
            f"/gated/{i}/", headers={"X-Request-ID": f"a-{i}", "X-Test-User": str(100 + i)}
        )

    async def main():
        _gate.update(started=0, expected=10, event=asyncio.Event())
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 20)

    responses = asyncio.run(main())
    # The gate guarantees overlap: all ten started before any wrote its event line.
    assert all("start" in ln["message"] for ln in lines[:10])
    assert [r["X-Request-ID"] for r in responses] == [f"a-{i}" for i in range(10)]
    app = [ln for ln in lines if ln["name"] == "ctxtest.app"]
    assert len(app) == 20
    for line in app:
        n = line["data"]["n"] if "data" in line else int(line["message"].split()[-1])
        assert line["request_id"] == f"a-{n}" and line["user_id"] == 100 + n
    events = [ln for ln in app if ln.get("event") == "async.event"]
    assert len(events) == 10


def test_middleware_is_async_capable_with_request_factory(lines):
    async def get_response(request):
        app_log.info("inside")
        return HttpResponse(status=204)

    mw = RequestContextMiddleware(get_response)
    assert iscoroutinefunction(mw)
    request = RequestFactory().delete("/thing/", headers={"X-Request-ID": "rf-1"})
    response = asyncio.run(asyncio.wait_for(mw(request), 5))
    assert response.status_code == 204 and response["X-Request-ID"] == "rf-1"
    inside, access = lines
    assert inside["request_id"] == "rf-1" and inside["user_id"] is None
    assert inside["method"] == "DELETE" and access["status"] == 204


def test_tasks_started_in_a_request_inherit_its_context_but_not_others(lines):
    async def get_response(request):
        async def child(tag):
            await asyncio.sleep(0)
            app_log.info("child %s", tag)

        await asyncio.gather(child("a"), child("b"))
        return HttpResponse()

    mw = RequestContextMiddleware(get_response)

    async def main():
        await asyncio.gather(
            mw(RequestFactory().get("/1/", headers={"X-Request-ID": "one"})),
            mw(RequestFactory().get("/2/", headers={"X-Request-ID": "two"})),
        )

    asyncio.run(asyncio.wait_for(main(), 5))
    children = [ln for ln in lines if ln["message"].startswith("child")]
    assert sorted((c["request_id"], c["path"]) for c in children) == [
        ("one", "/1/"),
        ("one", "/1/"),
        ("two", "/2/"),
        ("two", "/2/"),
    ]


def test_settings_are_validated():
    with override_settings(FASTCACHE_LOG_CONTEXT={"REQUEST_ID": "x"}):
        with pytest.raises(ImproperlyConfigured, match="REQUEST_ID"):
            RequestContextMiddleware(lambda r: HttpResponse())
    with override_settings(FASTCACHE_LOG_CONTEXT={"REQUEST_ID_HEADER": ""}):
        with pytest.raises(ImproperlyConfigured, match="REQUEST_ID_HEADER"):
            RequestContextMiddleware(lambda r: HttpResponse())


def test_custom_header_and_access_log_off(lines):
    conf = {"REQUEST_ID_HEADER": "X-Trace", "ACCESS_LOG": False}
    with override_settings(FASTCACHE_LOG_CONTEXT=conf):
        mw = RequestContextMiddleware(lambda r: HttpResponse())
    response = mw(RequestFactory().get("/", headers={"X-Trace": "tr-9"}))
    assert response["X-Trace"] == "tr-9"
    assert lines == []


@settings_for_tests
def test_sync_view_under_async_client_and_async_view_under_sync_client(lines):
    async def main():
        return await AsyncClient().get("/sync/3/", headers={"X-Request-ID": "cross-1"})

    asyncio.run(asyncio.wait_for(main(), 10))
    Client().get("/async/4/", headers={"X-Request-ID": "cross-2"})
    app = [ln for ln in lines if ln["name"] == "ctxtest.app"]
    assert [ln["request_id"] for ln in app] == ["cross-1"] * 2 + ["cross-2"] * 2
