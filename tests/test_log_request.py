"""The request log: access-line level by status, one traceback per unhandled exception,
client IP as DRF's throttles see it, user agent, response size, correlation id, query
strings with secrets redacted, the user a DRF view authenticates, a hook for more fields,
and the context of management commands."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand
from django.http import HttpResponse, StreamingHttpResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import path
from django.utils.functional import SimpleLazyObject
from django_fastcache.log import (
    REDACTED,
    JsonFormatter,
    RequestContextMiddleware,
    get_request_context,
    log_event,
)
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

app_log = logging.getLogger("reqlog.app")
AUTH_CALLS = {"n": 0}


class HeaderTokenAuth(BaseAuthentication):
    """Token authentication by header; counts its calls (one per request is expected)."""

    def authenticate(self, request):
        AUTH_CALLS["n"] += 1
        token = request.META.get("HTTP_X_TOKEN")
        if not token:
            return None
        return SimpleNamespace(pk=int(token), is_authenticated=True, is_active=True), token


@api_view(["GET"])
@authentication_classes([HeaderTokenAuth])
@permission_classes([AllowAny])
def drf_token_view(request):
    app_log.info("inside the view")
    log_event("drf.event", {"n": 1}, logger="reqlog.app")
    return Response({"ok": True})


@api_view(["GET"])
@authentication_classes([SessionAuthentication])
@permission_classes([AllowAny])
def drf_session_view(request):
    app_log.info("inside the view")
    return Response({"ok": True})


def status_view(request, code):
    app_log.info("status %s", code)
    return HttpResponse("x" * 7, status=code)


def failing_view(request):
    raise RuntimeError("view failed")


def streaming_view(request):
    return StreamingHttpResponse(iter([b"ab", b"cd"]))


def lazy_user_view(request):
    app_log.info("before the user is read")
    assert request.user.is_authenticated in (True, False)  # evaluates the lazy user
    app_log.info("after the user is read")
    return HttpResponse()


urlpatterns = [
    path("drf/token/", drf_token_view),
    path("drf/session/", drf_session_view),
    path("status/<int:code>/", status_view),
    path("fail/", failing_view),
    path("stream/", streaming_view),
    path("lazy/", lazy_user_view),
]

LAZY_EVALUATIONS = {"n": 0}


class LazyAuthMiddleware:
    """Like AuthenticationMiddleware: request.user is a SimpleLazyObject whose evaluation
    (a session and a database query in Django) is counted."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        uid = request.headers.get("X-Session-User")

        def load():
            LAZY_EVALUATIONS["n"] += 1
            return SimpleNamespace(pk=int(uid) if uid else None, is_authenticated=bool(uid),
                                   is_active=True)

        request.user = SimpleLazyObject(load)
        return self.get_response(request)


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.lines: list[dict] = []
        self.setFormatter(JsonFormatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record):
        self.records.append(record)
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def cap():
    handler = Capture()
    names = ("reqlog.app", "django_fastcache.access", "django.request", "django.server")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    AUTH_CALLS["n"] = 0
    LAZY_EVALUATIONS["n"] = 0
    try:
        yield handler
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def access(cap) -> dict:
    lines = [ln for ln in cap.lines if ln["name"] == "django_fastcache.access"]
    assert len(lines) == 1, cap.lines
    return lines[0]


MW = ["django_fastcache.log.RequestContextMiddleware"]
LAZY_MW = [f"{__name__}.LazyAuthMiddleware", *MW]
urls = override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW)


@pytest.mark.parametrize(
    ("code", "level"), [(200, "INFO"), (302, "INFO"), (404, "WARNING"), (429, "WARNING"),
                        (503, "ERROR")],
)
@urls
def test_the_access_level_follows_the_status(cap, code, level):
    Client().get(f"/status/{code}/")
    line = access(cap)
    assert (line["status"], line["levelname"]) == (code, level)
    assert line["response_size"] == 7


@pytest.mark.parametrize(
    ("levels", "code", "expected"),
    [({404: "INFO"}, 404, "INFO"), ({4: "ERROR"}, 429, "ERROR"), ({2: logging.DEBUG}, 200, "DEBUG"),
     ({404: "INFO"}, 403, "WARNING")],
)
def test_access_levels_are_configurable(cap, levels, code, expected):
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW,
                           FASTCACHE_LOG_CONTEXT={"ACCESS_LEVELS": levels}):
        Client().get(f"/status/{code}/")
    assert access(cap)["levelname"] == expected


@pytest.mark.parametrize("levels", [{6: "INFO"}, {2: "LOUD"}, ["INFO"], {"2xx": "INFO"}])
def test_bad_access_levels_are_refused(levels):
    with override_settings(FASTCACHE_LOG_CONTEXT={"ACCESS_LEVELS": levels}):
        with pytest.raises(ImproperlyConfigured, match="ACCESS_LEVELS"):
            RequestContextMiddleware(lambda r: HttpResponse())


@urls
def test_an_unhandled_exception_is_logged_once_with_its_traceback(cap):
    response = Client(raise_request_exception=False).get("/fail/", headers={"X-Request-ID": "e-1"})
    assert response.status_code == 500
    with_traceback = [(r, ln) for r, ln in zip(cap.records, cap.lines, strict=True) if r.exc_info]
    assert len(with_traceback) == 1
    record, line = with_traceback[0]
    assert record.levelno == logging.ERROR and record.name == "django.request"
    assert "RuntimeError: view failed" in line["exc_info"]
    assert line["request_id"] == "e-1"  # written inside the request's context
    acc = access(cap)
    assert acc["levelname"] == "ERROR" and acc["status"] == 500
    assert acc["exception"] == "builtins.RuntimeError" and "exc_info" not in acc
    assert sum("view failed" in json.dumps(ln) for ln in cap.lines) == 1


@pytest.mark.parametrize("num_proxies", [None, 0, 1, 2, 5])
@pytest.mark.parametrize(
    "xff", [None, "1.1.1.1", "1.1.1.1, 2.2.2.2", " 9.9.9.9 ,8.8.8.8,  7.7.7.7", "spoofed"]
)
def test_client_ip_is_the_throttles_identity(cap, num_proxies, xff):
    headers = {"X-Forwarded-For": xff} if xff is not None else {}
    rest = {"NUM_PROXIES": num_proxies}
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW, REST_FRAMEWORK=rest):
        Client(REMOTE_ADDR="10.0.0.9").get("/status/200/", headers=headers)
        request = RequestFactory(REMOTE_ADDR="10.0.0.9").get("/", headers=headers)
        expected = BaseThrottle().get_ident(request)  # DRF's own, under the same settings
    assert access(cap)["client_ip"] == expected


@urls
def test_user_agent_is_truncated_and_sizes_are_reported(cap):
    Client().get("/status/200/", headers={"User-Agent": "U" * 5000})
    Client().get("/stream/")
    first, second = [ln for ln in cap.lines if ln["name"] == "django_fastcache.access"]
    assert first["user_agent"] == "U" * 256
    assert second["response_size"] is None and second["user_agent"] is None
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW,
                           FASTCACHE_LOG_CONTEXT={"USER_AGENT_MAX_LENGTH": 10}):
        Client().get("/status/200/", headers={"User-Agent": "curl/8.0.1 (x86_64)"})
    assert cap.lines[-1]["user_agent"] == "curl/8.0.1"


@urls
def test_correlation_id_is_taken_from_its_header_when_well_formed(cap):
    Client().get("/status/200/", headers={"X-Correlation-ID": "corr-1"})
    Client().get("/status/200/", headers={"X-Correlation-ID": "bad value\r\n"})
    Client().get("/status/200/")
    app = [ln for ln in cap.lines if ln["name"] == "reqlog.app"]
    assert [ln["correlation_id"] for ln in app] == ["corr-1", None, None]
    conf = {"CORRELATION_ID_HEADER": "X-Amzn-Trace-Id"}
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW, FASTCACHE_LOG_CONTEXT=conf):
        Client().get("/status/200/", headers={"X-Amzn-Trace-Id": "Root=1-abc"})
    assert cap.lines[-1]["correlation_id"] is None  # "=" is not allowed in an id
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW, FASTCACHE_LOG_CONTEXT=conf):
        Client().get("/status/200/", headers={"X-Amzn-Trace-Id": "1-abc-def"})
    assert cap.lines[-1]["correlation_id"] == "1-abc-def"
    with override_settings(FASTCACHE_LOG_CONTEXT={"CORRELATION_ID_HEADER": ""}):
        with pytest.raises(ImproperlyConfigured, match="CORRELATION_ID_HEADER"):
            RequestContextMiddleware(lambda r: HttpResponse())


def test_query_strings_are_logged_only_when_asked_and_redacted(cap):
    query = "page=2&access_token=abc&password=pw"
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW):
        Client().get(f"/status/200/?{query}")
    line = access(cap)
    assert "query" not in line and "abc" not in json.dumps(cap.lines)
    cap.lines.clear()
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW,
                           FASTCACHE_LOG_CONTEXT={"LOG_QUERY_STRING": True}):
        Client().get(f"/status/200/?{query}")
    line = access(cap)
    expected = f"page=2&access_token={REDACTED}&password={REDACTED}"
    assert line["query"] == expected
    assert line["message"] == f'"GET /status/200/?{expected}" 200'
    # Redacted before any formatter sees it: a plain-text handler shows no secret either.
    assert "abc" not in logging.Formatter().format(cap.records[-1])


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW)
def test_lines_inside_a_drf_view_carry_the_user_drf_authenticated(cap):
    Client().get("/drf/token/", headers={"X-Token": "42", "X-Request-ID": "drf-1"})
    inside = [ln for ln in cap.lines if ln["name"] == "reqlog.app"]
    assert [ln["user_id"] for ln in inside] == [42, 42]
    assert access(cap)["user_id"] == 42
    assert AUTH_CALLS["n"] == 1  # resolved from what DRF set, not authenticated again
    cap.lines.clear()
    Client().get("/drf/token/")
    assert [ln["user_id"] for ln in cap.lines] == [None, None, None]


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=LAZY_MW)
def test_session_users_resolve_without_evaluating_the_lazy_user_early(cap):
    Client().get("/drf/session/", headers={"X-Session-User": "7"})
    assert [ln["user_id"] for ln in cap.lines] == [7, 7]
    assert LAZY_EVALUATIONS["n"] == 1


def test_a_lazy_user_is_never_evaluated_by_writing_a_line(cap):
    # The middleware placed before the authentication middleware: the user is lazy and
    # unevaluated at the first line; writing it must not evaluate it.
    def view(request):
        request.user = SimpleLazyObject(lambda: LAZY_EVALUATIONS.__setitem__("n", 1) or
                                        SimpleNamespace(pk=3, is_authenticated=True))
        app_log.info("before")
        assert LAZY_EVALUATIONS["n"] == 0
        request.user.pk  # noqa: B018 - the view reads the user
        app_log.info("after")
        return HttpResponse()

    RequestContextMiddleware(view)(RequestFactory().get("/"))
    assert [ln["user_id"] for ln in cap.lines] == [None, 3, 3]
    assert get_request_context() == {}


def bind_tenant(request):
    return {"tenant": request.headers.get("X-Tenant"), "plan": "pro"}


def test_a_hook_binds_more_fields(cap):
    conf = {"CONTEXT_HOOK": f"{__name__}.bind_tenant"}
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MW, FASTCACHE_LOG_CONTEXT=conf):
        Client().get("/status/200/", headers={"X-Tenant": "acme"})
    for line in cap.lines:
        assert line["tenant"] == "acme" and line["plan"] == "pro"
    with override_settings(FASTCACHE_LOG_CONTEXT={"CONTEXT_HOOK": "no.such.hook"}):
        with pytest.raises(ImproperlyConfigured, match="CONTEXT_HOOK"):
            RequestContextMiddleware(lambda r: HttpResponse())
    with override_settings(FASTCACHE_LOG_CONTEXT={"CONTEXT_HOOK": 5}):
        with pytest.raises(ImproperlyConfigured, match="CONTEXT_HOOK"):
            RequestContextMiddleware(lambda r: HttpResponse())
    with override_settings(FASTCACHE_LOG_CONTEXT={"CONTEXT_HOOK": lambda request: ["x"]}):
        mw = RequestContextMiddleware(lambda r: HttpResponse())
    with pytest.raises(TypeError, match="CONTEXT_HOOK"):
        mw(RequestFactory().get("/"))


class Command(BaseCommand):
    def handle(self, *args, **options):
        app_log.info("from a command %s", get_request_context()["command"])


def test_management_commands_run_with_a_context(cap):
    Command().execute(no_color=True, force_color=False, skip_checks=True, stdout=None,
                      stderr=None)
    Command().execute(no_color=True, force_color=False, skip_checks=True, stdout=None,
                      stderr=None)
    first, second = cap.lines
    assert first["command"] == "test_log_request" and first["run_id"] != second["run_id"]
    assert get_request_context() == {}


def test_a_real_management_command_is_named_as_manage_py_names_it(monkeypatch):
    from django.core.management import call_command
    from django_fastcache.management.commands import fastcache_stats

    seen = []
    monkeypatch.setattr(fastcache_stats.Command, "handle",
                        lambda self, *a, **o: seen.append(get_request_context()))
    call_command("fastcache_stats")
    assert seen[0]["command"] == "fastcache_stats" and len(seen[0]["run_id"]) == 32
    assert get_request_context() == {}
