"""JsonFormatter beyond python-json-logger: lines it never loses, redaction, exception text
reuse, Django's own records, log_event and configuration errors."""

from __future__ import annotations

import json
import logging
import socket
import sys
from contextlib import contextmanager

import pytest
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.log import log_response
from django_fastcache.log import (
    DEFAULT_REDACT_KEYS,
    REDACTED,
    JsonFormatter,
    bind_context,
    log_event,
)
from pythonjsonlogger.json import JsonFormatter as PjlFormatter


class ListHandler(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def parsed(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]


@contextmanager
def capture(name: str, formatter: logging.Formatter | None = None):
    logger = logging.getLogger(name)
    handler = ListHandler(formatter or JsonFormatter())
    old = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]


def record(msg="m", args=(), exc_info=None, **extra) -> logging.LogRecord:
    r = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, exc_info)
    r.__dict__.update(extra)
    return r


def one_line(out: str) -> dict:
    assert "\n" not in out
    out.encode("utf-8")  # strict: a handler can always write it
    return json.loads(out)


# --- lines python-json-logger loses ---------------------------------------------------------


def test_circular_dict_and_list_become_placeholders():
    d: dict = {"a": 1}
    d["self"] = d
    lst: list = [1]
    lst.append(lst)
    with pytest.raises(ValueError):
        PjlFormatter().format(record(d=d))
    out = one_line(JsonFormatter().format(record(d=d, lst=lst)))
    assert out["d"] == {"a": 1, "self": "[Circular]"}
    assert out["lst"] == [1, "[Circular]"]


def test_shared_but_acyclic_values_are_written_twice():
    shared = {"x": [1, 2]}
    out = one_line(JsonFormatter().format(record(a=shared, b=[shared, shared])))
    assert out["a"] == shared and out["b"] == [shared, shared]


def test_default_that_returns_its_argument_does_not_recurse():
    class Odd:
        pass

    odd = Odd()
    out = one_line(JsonFormatter(json_default=lambda o: [o]).format(record(o=odd)))
    assert out["o"] == ["[Circular]"]


def test_odd_dict_keys_are_stringified():
    value = {(1, 2): "tuple", 1: "int", 2.5: "float", None: "none", False: "bool"}
    with pytest.raises(TypeError):
        PjlFormatter().format(record(v=value))
    out = one_line(JsonFormatter().format(record(v=value)))
    assert out["v"] == {
        "(1, 2)": "tuple",
        "1": "int",
        "2.5": "float",
        "null": "none",
        "false": "bool",
    }


def test_nan_and_infinity_become_null():
    bad = PjlFormatter().format(record(n=float("nan")))
    assert "NaN" in bad
    out = one_line(
        JsonFormatter().format(record(n=float("nan"), i=float("inf"), j=[-float("inf")]))
    )
    assert out["n"] is None and out["i"] is None and out["j"] == [None]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_lone_surrogates_are_escaped(ensure_ascii):
    text = "a\ud800b\udfffc"
    out = JsonFormatter(json_ensure_ascii=ensure_ascii).format(record(msg=text, s=text))
    assert "\\ud800" in out and "\\udfff" in out
    assert one_line(out)["message"] == text


def test_values_whose_str_fails():
    class NoStr:
        def __str__(self):
            raise RuntimeError("no str")

        def __repr__(self):
            return "NoStr()"

    class Nothing:
        def __str__(self):
            raise RuntimeError("no str")

        def __repr__(self):
            raise RuntimeError("no repr")

    out = one_line(JsonFormatter().format(record(a=NoStr(), b=Nothing(), c={NoStr(): 1})))
    assert out["a"] == "NoStr()"
    assert out["b"] == "__could_not_encode__"
    assert out["c"] == {"NoStr()": 1}


def test_failing_json_default_falls_back_to_str():
    def default(o):
        raise TypeError("unsupported")

    out = one_line(JsonFormatter(json_default=default).format(record(s={1})))
    assert out["s"] == "{1}"


def test_keyboard_interrupt_in_default_propagates():
    def default(o):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        JsonFormatter(json_default=default).format(record(s={1}))


def test_very_deep_nesting_is_cut_not_crashed():
    deep: list = []
    node = deep
    for _ in range(5000):
        node.append([])
        node = node[0]
    out = one_line(JsonFormatter().format(record(deep=deep)))
    depth, node = 0, out["deep"]
    while isinstance(node, list):
        node, depth = node[0], depth + 1
    assert node == "[MaxDepth]" and 100 < depth < 300


def test_big_ints_and_int_subclasses():
    class MyInt(int):
        def __repr__(self):
            return "nope"

    out = JsonFormatter().format(record(a=2**64, b=-(2**63) - 1, c=MyInt(2**80), d=MyInt(5)))
    assert '"a": 18446744073709551616' in out
    assert '"b": -9223372036854775809' in out
    assert one_line(out)["c"] == 2**80 and one_line(out)["d"] == 5


def test_newlines_in_messages_stay_on_one_line():
    out = one_line(JsonFormatter().format(record(msg="line1\nline2\r\n\ttab")))
    assert out["message"] == "line1\nline2\r\n\ttab"


# --- exception text -------------------------------------------------------------------------


def _exc_info():
    try:
        raise ValueError("boom for alice@example.com")
    except ValueError:
        return sys.exc_info()


def test_exception_text_is_formatted_once_per_record(monkeypatch):
    calls = []
    original = logging.Formatter.formatException

    def counting(self, ei):
        calls.append(1)
        return original(self, ei)

    monkeypatch.setattr(logging.Formatter, "formatException", counting)
    r = record(exc_info=_exc_info())
    first = JsonFormatter().format(r)
    second = JsonFormatter(exc_info_as_array=True).format(r)
    plain = logging.Formatter().format(r)
    assert len(calls) == 1
    assert json.loads(first)["exc_info"] == r.exc_text
    assert json.loads(second)["exc_info"] == r.exc_text.splitlines()
    assert plain.endswith(r.exc_text)


def test_overridden_format_exception_is_used():
    class Short(JsonFormatter):
        def formatException(self, ei):
            return f"{ei[0].__name__}!"

    out = one_line(Short().format(record(exc_info=_exc_info())))
    assert out["exc_info"] == "ValueError!"


# --- redaction ------------------------------------------------------------------------------


def test_secret_keys_are_redacted_at_any_depth():
    extra = {
        "user": {"name": "al", "password": "hunter2", "profile": {"API-Key": "k", "ok": 1}},
        "headers": [{"Authorization": "Basic xyz"}, {"X-CSRFToken": "t", "Cookie": "c"}],
        "session_id": "s",
        "db_passwd": "p",
        "client_secret": {"nested": "whole value"},
        "refresh_token": None,
    }
    out = one_line(JsonFormatter().format(record(**extra)))
    assert out["user"] == {
        "name": "al",
        "password": REDACTED,
        "profile": {"API-Key": REDACTED, "ok": 1},
    }
    assert out["headers"] == [
        {"Authorization": REDACTED},
        {"X-CSRFToken": REDACTED, "Cookie": REDACTED},
    ]
    for key in ("session_id", "db_passwd", "client_secret", "refresh_token"):
        assert out[key] == REDACTED


def test_dict_messages_are_redacted():
    out = one_line(JsonFormatter().format(record(msg={"event": "login", "password": "x"})))
    assert out["password"] == REDACTED and out["event"] == "login"


def test_redact_keys_are_configurable():
    r = record(ssn="123", password="pw")
    out = one_line(JsonFormatter(redact_keys=["ssn"]).format(r))
    assert out["ssn"] == REDACTED and out["password"] == "pw"
    out = one_line(JsonFormatter(redact_keys=None).format(record(password="pw")))
    assert out["password"] == "pw"
    assert "csrf" in DEFAULT_REDACT_KEYS


def test_value_patterns_are_opt_in():
    text = "card 4111 1111 1111 1111, not 4111 1111 1111 1112, mail bob.s+x@mail.example.org"
    plain = one_line(JsonFormatter().format(record(note=text)))
    assert plain["note"] == text
    f = JsonFormatter(redact_values=["card", "email", "bearer"])
    out = one_line(
        f.format(
            record(
                msg=text,
                note={"deep": [text]},
                header="Bearer abc.DEF-123_~+/xyz==",
                dashes="4012-8888-8888-1881",
                uuid_like="12345678-1234-5678-1234-567812345678",
            )
        )
    )
    expected = f"card {REDACTED}, not 4111 1111 1111 1112, mail {REDACTED}"
    assert out["message"] == expected
    assert out["note"] == {"deep": [expected]}
    assert out["header"] == f"Bearer {REDACTED}"
    assert out["dashes"] == REDACTED
    assert out["uuid_like"] == "12345678-1234-5678-1234-567812345678"


def test_exception_text_is_not_scanned():
    f = JsonFormatter(redact_values=["email"])
    out = one_line(f.format(record(exc_info=_exc_info(), stack_info="at alice@example.com")))
    assert "alice@example.com" in out["exc_info"]
    assert out["stack_info"] == "at alice@example.com"


def test_redaction_settings_are_checked():
    with pytest.raises(ValueError, match="redact_values.*'phone'"):
        JsonFormatter(redact_values=["phone"])
    with pytest.raises(TypeError, match="redact_keys"):
        JsonFormatter(redact_keys=[1])
    with pytest.raises(ValueError, match="style"):
        JsonFormatter(style="!")


# --- Django's own records -------------------------------------------------------------------


def test_django_request_records_carry_a_request_summary():
    request = RequestFactory().get("/missing/?q=1")
    with capture("django.request") as h:
        log_response(
            "Not Found: %s", request.path, response=HttpResponse(status=404), request=request
        )
    (out,) = h.parsed()
    assert out["request"] == {"method": "GET", "path": "/missing/", "status": 404}
    assert out["status_code"] == 404


def test_django_server_records_summarize_the_socket():
    sock = socket.socket()
    try:
        with capture("django.server") as h:
            logging.getLogger("django.server").info(
                '"%s" %s %s',
                "POST /api/items HTTP/1.1",
                "201",
                "12",
                extra={"request": sock, "server_time": "now", "status_code": 201},
            )
    finally:
        sock.close()
    (out,) = h.parsed()
    assert out["request"] == {"method": "POST", "path": "/api/items", "status": 201}


def test_nested_requests_and_sockets_use_the_default_table():
    request = RequestFactory().post("/x/")
    sock = socket.socket()
    try:
        out = one_line(JsonFormatter().format(record(ctx={"req": request, "sock": sock})))
    finally:
        sock.close()
    assert out["ctx"]["req"] == {"method": "POST", "path": "/x/"}
    assert out["ctx"]["sock"] == {"socket": True, "peer": None}


# --- log_event ------------------------------------------------------------------------------


def test_log_event_writes_one_structured_line_with_the_user():
    with capture("events.test") as h:
        with bind_context(user_id=42, request_id="r-1"):
            log_event("order.paid", {"order": 7, "card_token": "tok"}, logger="events.test")
        log_event("order.viewed", logger=logging.getLogger("events.test"), level=logging.DEBUG)
        log_event("noise", level="debug", logger="events.quiet")
    first, second = h.parsed()
    assert first["message"] == "order.paid" and first["event"] == "order.paid"
    assert first["data"] == {"order": 7, "card_token": REDACTED}
    assert first["user_id"] == 42 and first["request_id"] == "r-1"
    assert second["user_id"] is None and second["data"] == {}
    assert "request_id" not in second


def test_log_event_rejects_bad_levels():
    with pytest.raises(ValueError, match="level"):
        log_event("x", level="LOUD")
    with pytest.raises(TypeError, match="level"):
        log_event("x", level=1.5)


def test_request_context_can_be_turned_off():
    with bind_context(request_id="abc"):
        on = one_line(JsonFormatter().format(record()))
        off = one_line(JsonFormatter(request_context=False).format(record()))
    assert on["request_id"] == "abc" and "request_id" not in off


# --- redaction rules in the C++ core --------------------------------------------------------

from django_fastcache import _core  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CARD, EMAIL, BEARER = 1, 2, 4


@pytest.mark.parametrize(
    "text, spans",
    [
        ("4111111111111111", [(0, 16)]),
        ("x 4111-1111-1111-1111 y", [(2, 21)]),
        ("4111111111111112", []),  # Luhn fails
        ("a4111111111111111", []),  # part of a word
        ("41111111111111110000", []),  # 20 digits: not a card
        ("378282246310005", [(0, 15)]),  # 15-digit Amex
        ("4111  1111 1111 1111", []),  # two separators in a row end the number
    ],
)
def test_card_spans(text, spans):
    assert _core.find_redaction_spans(text, CARD) == spans


@pytest.mark.parametrize(
    "text, spans",
    [
        ("mail a.b+c@ex-ample.co.uk.", [(5, 25)]),
        ("x@y", []),
        ("@example.com", []),
        ("a@b.c", []),
        ("a@.com", []),
        ("é x@example.com ü", [(2, 15)]),  # non-ASCII around, offsets in code points
    ],
)
def test_email_spans(text, spans):
    assert _core.find_redaction_spans(text, EMAIL) == spans


def test_bearer_spans_and_merging():
    assert _core.find_redaction_spans("Authorization: bearer  abc.def=", BEARER) == [(23, 31)]
    assert _core.find_redaction_spans("Bearer", BEARER) == []
    assert _core.find_redaction_spans("unbearer x", BEARER) == []
    text = "Bearer a@b.io"
    assert _core.find_redaction_spans(text, BEARER | EMAIL) == [(7, 13)]


_json_leaves = st.none() | st.integers() | st.text(max_size=5)
_nested = st.recursive(
    _json_leaves,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(
    _nested,
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["password", "X-Api-Key", "sessionid", "Set-Cookie", "authorization"]),
)
def test_secret_keys_are_redacted_wherever_they_are_nested(tree, seed, key):
    secret = {key: "S3CR3T-VALUE"}
    # Walk down the generated tree along `seed` and hang the secret there.
    node, path = tree, seed
    while isinstance(node, (list, dict)) and node and path:
        items = list(node.values()) if isinstance(node, dict) else node
        child = items[path % len(items)]
        if not isinstance(child, (list, dict)):
            break
        node, path = child, path // 3
    if isinstance(node, list):
        node.append(secret)
    elif isinstance(node, dict):
        node["hide"] = secret
    else:
        tree = [tree, secret]
    for message in ({"m": tree}, "plain"):
        out = JsonFormatter().format(record(msg=message, extra_tree=tree))
        assert "S3CR3T-VALUE" not in out
        json.loads(out)


# --- concurrency and re-entrancy ------------------------------------------------------------


def test_reentrant_format_from_a_default_function():
    inner_lines = []

    class Logs:
        def __str__(self):
            return "logs-str"

    def default(obj):
        inner_lines.append(formatter.format(record(msg="inner", nested=[1, {"k": "v"}])))
        return str(obj)

    formatter = JsonFormatter(json_default=default)
    out = one_line(formatter.format(record(msg="outer", a=[Logs(), {"b": Logs()}])))
    assert out["a"] == ["logs-str", {"b": "logs-str"}]
    assert [json.loads(line)["message"] for line in inner_lines] == ["inner", "inner"]


def test_one_formatter_shared_by_threads_gives_the_same_lines():
    import threading

    formatter = JsonFormatter(fmt="%(levelname)s %(message)s", redact_values=["email"])
    records = [
        record(msg="m %s", args=(i,), n=i, d={"x": [i] * (i % 5), "mail": f"u{i}@ex.com"})
        for i in range(200)
    ]
    expected = [formatter.format(r) for r in records]
    results: dict[int, list[str]] = {}

    def work(t):
        results[t] = [formatter.format(r) for r in records for _ in range(3)][::3]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 6
    assert all(lines == expected for lines in results.values())
