"""``cached_view`` never shares one visitor's page: a page whose view read the session or
``request.user``, used the CSRF token, set a cookie or was marked private is not stored,
unless the entry is keyed per user (``per_user=True``) or by the cookie
(``vary_on_cookie=True``). Django's ``cache_page`` falls into this trap; the first test
shows it does, in the same run, so the difference is on record."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.test import Client, override_settings
from django.urls import path
from django.views.decorators.cache import cache_page
from django_fastcache.decorators import cached_view


def whoami(request):
    name = request.user.username if request.user.is_authenticated else "anonymous"
    return HttpResponse(f"hello {name}")


def from_session(request):
    return HttpResponse(f"cart {request.session.get('cart', [])}")


def public(request):
    return HttpResponse("the same for everyone")


def sets_cookie(request):
    response = HttpResponse("welcome")
    response.set_cookie("seen", "1")
    return response


def with_csrf(request):
    return HttpResponse(f"<form><input value='{get_token(request)}'></form>")


def private(request):
    response = HttpResponse("mine")
    response["Cache-Control"] = "no-store"
    return response


class ReadsUserFirst:
    """A middleware that reads the user before the view (as a log-context middleware
    does): that read says nothing about the page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.reads_user_first = request.user.is_authenticated
        request.session.get("anything")
        return self.get_response(request)


urlpatterns = [
    path("django/whoami/", cache_page(60)(whoami)),
    path("whoami/", cached_view(60)(whoami)),
    path("session/", cached_view(60)(from_session)),
    path("public/", cached_view(60)(public)),
    path("cookie/", cached_view(60)(sets_cookie)),
    path("csrf/", cached_view(60)(with_csrf)),
    path("private/", cached_view(60)(private)),
    path("per-user/whoami/", cached_view(60, per_user=True)(whoami)),
    path("per-user/session/", cached_view(60, per_user=True)(from_session)),
    path("cookie-keyed/whoami/", cached_view(60, vary_on_cookie=True)(whoami)),
]

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("site"),
]


@pytest.fixture
def site():
    from django.core.cache import caches

    with override_settings(
        ROOT_URLCONF=__name__,
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
    ):
        caches["default"].clear()
        yield
        caches["default"].clear()


def client_for(username: str | None) -> Client:
    client = Client()
    if username is not None:
        user, _ = User.objects.get_or_create(username=username)
        client.force_login(user)
    return client


def test_djangos_cache_page_serves_alices_page_to_others():
    # The trap, reproduced: this is the behaviour cached_view does not copy.
    assert client_for("alice").get("/django/whoami/").content == b"hello alice"
    assert client_for("bob").get("/django/whoami/").content == b"hello alice"
    assert client_for(None).get("/django/whoami/").content == b"hello alice"


def test_alices_page_is_served_to_neither_bob_nor_an_anonymous_client(caplog):
    with caplog.at_level(logging.WARNING, logger="django_fastcache.decorators"):
        assert client_for("alice").get("/whoami/").content == b"hello alice"
        assert client_for("bob").get("/whoami/").content == b"hello bob"
        assert client_for(None).get("/whoami/").content == b"hello anonymous"
        assert client_for("alice").get("/whoami/").content == b"hello alice"
    declined = [r for r in caplog.records if "did not store" in r.getMessage()]
    assert len(declined) == 1  # once per view, not per request
    message = declined[0].getMessage()
    assert "request.user" in message and "per_user=True" in message


def test_a_page_built_from_the_session_is_not_shared():
    alice = client_for(None)
    session = alice.session
    session["cart"] = ["book"]
    session.save()
    alice.cookies["sessionid"] = session.session_key
    assert alice.get("/session/").content == b"cart ['book']"
    assert client_for(None).get("/session/").content == b"cart []"


@pytest.mark.parametrize("url", ["/cookie/", "/csrf/", "/private/"])
def test_cookies_csrf_tokens_and_private_responses_are_not_stored(url):
    first = client_for(None).get(url)
    second = client_for(None).get(url)
    assert "Expires" not in second  # not a cached copy: cache headers are added on store
    if url == "/csrf/":
        assert first.content != second.content  # each visitor has a token of their own


def test_pages_that_read_nothing_private_are_cached_and_shared():
    client_for("alice").get("/public/")
    after = client_for("bob").get("/public/")
    assert after.content == b"the same for everyone"
    assert after["Cache-Control"] == "max-age=60"  # stored and served like cache_page


def test_per_user_entries_keep_users_apart_and_are_cached():
    assert client_for("alice").get("/per-user/whoami/").content == b"hello alice"
    assert client_for("bob").get("/per-user/whoami/").content == b"hello bob"
    assert client_for(None).get("/per-user/whoami/").content == b"hello anonymous"
    # Stored: renaming alice does not change her cached page within the timeout.
    User.objects.filter(username="alice").update(username="alice2")
    alice = Client()
    alice.force_login(User.objects.get(username="alice2"))
    assert alice.get("/per-user/whoami/").content == b"hello alice"


def test_per_user_never_shares_an_anonymous_visitors_session():
    assert client_for(None).get("/per-user/session/").content == b"cart []"
    visitor = Client()
    session = visitor.session
    session["cart"] = ["secret"]
    session.save()
    visitor.cookies["sessionid"] = session.session_key
    assert visitor.get("/per-user/session/").content == b"cart ['secret']"
    assert client_for(None).get("/per-user/session/").content == b"cart []"


def test_vary_on_cookie_keys_entries_by_the_cookie():
    alice, bob = client_for("alice"), client_for("bob")
    assert alice.get("/cookie-keyed/whoami/").content == b"hello alice"
    assert bob.get("/cookie-keyed/whoami/").content == b"hello bob"
    assert client_for(None).get("/cookie-keyed/whoami/").content == b"hello anonymous"
    hit = alice.get("/cookie-keyed/whoami/")
    assert hit.content == b"hello alice" and "Cookie" in hit["Vary"]


@override_settings(MIDDLEWARE=[
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    f"{__name__}.ReadsUserFirst",
])
def test_reads_by_middleware_before_the_view_do_not_count():
    # The view's own reads are still seen: alice's page is not shared...
    assert client_for("alice").get("/whoami/").content == b"hello alice"
    assert client_for("bob").get("/whoami/").content == b"hello bob"
    # ...and a page that reads nothing of the visitor is still cached.
    client_for("alice").get("/public/")
    assert client_for("bob").get("/public/")["Cache-Control"] == "max-age=60"
    # SessionMiddleware still sees the middleware's session read (Vary: Cookie).
    assert "Cookie" in client_for("bob").get("/whoami/").get("Vary", "")
