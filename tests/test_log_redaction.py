"""Safe by default (issue 11, item 9): lines whose arguments do not fit the message are
kept, Django's rule for sensitive names (plus short words) redacts keys of every kind,
secret query parameters are redacted in messages and paths, and a record stays one line
with ensure_ascii=False."""

from __future__ import annotations

import io
import json
import logging
import string

import pytest
from django.views.debug import SafeExceptionReporterFilter
from django_fastcache.log import REDACTED, JsonFormatter
from hypothesis import given, settings
from hypothesis import strategies as st


def record(msg="m", args=(), **extra) -> logging.LogRecord:
    r = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
    r.__dict__.update(extra)
    return r


def line(formatter: JsonFormatter, r: logging.LogRecord) -> dict:
    text = formatter.format(r)
    assert "\n" not in text
    return json.loads(text)


# ----------------------------------------------------------------------------- format errors


@pytest.mark.parametrize("hooked", [False, True])
def test_a_message_its_arguments_do_not_fit_is_written_with_the_error(hooked, capsys):
    class Hooked(JsonFormatter):
        def process_log_record(self, log_data):
            return log_data

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(Hooked() if hooked else JsonFormatter())
    logger = logging.getLogger(f"test.format_error.{hooked}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("%s %s", 1)
        logger.info("%d items", "many")
        logger.info("ok %s", "fine")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["%s %s", "%d items", "ok fine"]
    assert lines[0]["format_error"].startswith("TypeError: not enough arguments")
    assert "args=(1,)" in lines[0]["format_error"]
    assert lines[1]["format_error"].startswith("TypeError:")
    assert "format_error" not in lines[2]
    assert capsys.readouterr().err == ""  # logging.Handler.handleError printed nothing


def test_a_record_subclass_whose_get_message_fails_is_kept():
    class Broken(logging.LogRecord):
        def getMessage(self):
            raise ValueError("no message")

    r = Broken("t", logging.INFO, __file__, 1, "raw %s", ("x",), None)
    out = line(JsonFormatter(), r)
    assert out["message"] == "raw %s"
    assert out["format_error"] == "ValueError: no message; args=('x',)"


def test_huge_arguments_are_cut_in_the_error():
    out = line(JsonFormatter(), record("%s %s", ("x" * 10_000,)))
    assert len(out["format_error"]) < 300


# ----------------------------------------------------------------------------- key rule

MISSED_BEFORE = ["pwd", "pass", "passphrase", "private_key", "session_key", "otp", "jwt",
                 "signature", "x-auth"]
DJANGO_RULE = ["API_URL", "auth", "Authorization", "token", "csrfmiddlewaretoken", "KEY",
               "secret", "password", "db_PASSWORD", "SIGNATURE", "HTTP_COOKIE", "sessionid",
               "X-Api-Key", "user_otp", "otpCode", "X-JWT-Assertion", "admin_pwd", "TOTP"]
INNOCENT = ["username", "note", "footprint", "hotpot", "user_id", "path", "status",
            "duration_ms", "email", "count"]


@pytest.mark.parametrize("key", MISSED_BEFORE + DJANGO_RULE)
def test_sensitive_names_are_redacted_by_default(key):
    out = line(JsonFormatter(), record(**{key: "s3cr3t"}))
    assert out[key] == REDACTED


@pytest.mark.parametrize("key", INNOCENT)
def test_innocent_names_are_kept(key):
    assert line(JsonFormatter(), record(**{key: "v"}))[key] == "v"


_key_chars = st.sampled_from(
    list(string.ascii_letters + string.digits + "_-. ") + ["\u0130", "\u0131", "\u017f",
                                                           "\u212a", "é", "ß"]
)
_hidden_words = st.sampled_from(["api", "auth", "token", "key", "secret", "pass", "signature",
                                 "HTTP_COOKIE", "AuTh", "ſecret", "\u212aey", "ToKeN", "PA_SS"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.text(_key_chars, max_size=4), _hidden_words), min_size=1, max_size=5)
)
def test_every_name_django_hides_is_redacted(parts):
    key = "".join(parts)
    if not SafeExceptionReporterFilter.hidden_settings.search(key):
        return
    out = line(JsonFormatter(), record(msg={key: "v", "k2": {key: ["v"]}}))
    assert out[key] == REDACTED and out["k2"][key] == REDACTED, key


def test_bytes_keys_and_pairs_are_redacted():
    headers = [("Authorization", "Bearer abc"), ("Accept", "json"), (b"X-Api-Key", b"k"),
               ["session_key", "abc"]]
    out = line(JsonFormatter(), record(headers=headers, raw={b"password": "pw", b"name": "n"}))
    assert out["headers"] == [["Authorization", REDACTED], ["Accept", "json"],
                              ["WC1BcGktS2V5", REDACTED], ["session_key", REDACTED]]
    assert out["raw"] == {"b'password'": REDACTED, "b'name'": "n"}
    items = line(JsonFormatter(), record(items=list({"token": "t", "n": 1}.items())))["items"]
    assert items == [["token", REDACTED], ["n", 1]]


def test_pairs_and_bytes_keys_are_written_as_is_without_redaction():
    headers = [("Authorization", "Bearer abc")]
    out = line(JsonFormatter(redact_keys=(), redact_key_words=()), record(headers=headers))
    assert out["headers"] == [["Authorization", "Bearer abc"]]


def test_word_rule_is_configurable():
    out = line(JsonFormatter(redact_keys=(), redact_key_words=["pin"]),
               record(card_pin="1", spinner="2", PIN="3"))
    assert (out["card_pin"], out["spinner"], out["PIN"]) == (REDACTED, "2", REDACTED)
    with pytest.raises(TypeError, match="redact_key_words"):
        JsonFormatter(redact_key_words=[b"pin"])


# ----------------------------------------------------------------------------- query strings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /cb?access_token=abc&password=pw&page=2 200",
         f"GET /cb?access_token={REDACTED}&password={REDACTED}&page=2 200"),
        ("/x?page=1&api_key=K-1.2#frag", f"/x?page=1&api_key={REDACTED}#frag"),
        ('"https://h/p?q=1;sig=zz&Signature=abc" done',
         f'"https://h/p?q=1;sig=zz&Signature={REDACTED}" done'),
        ("?code=1&otp=123456", f"?code=1&otp={REDACTED}"),
        ("nothing?here", "nothing?here"),
        ("token=x&a=1", "token=x&a=1"),  # a bare query string in a message: no "?"
        ("a=1&token=x", f"a=1&token={REDACTED}"),
        ("?token=&next=/", "?token=&next=/"),  # empty values stay empty
        ("?token=x\u2028y", f"?token={REDACTED}\u2028y"),
    ],
)
def test_secret_query_parameters_are_redacted_in_messages(text, expected):
    out = line(JsonFormatter(), record(text))
    assert out["message"] == expected
    assert line(JsonFormatter(), record(path=text))["path"] == expected


def test_query_redaction_can_be_turned_off():
    text = "/cb?access_token=abc"
    assert line(JsonFormatter(redact_values=()), record(text))["message"] == text


def test_bare_query_strings_are_redacted_by_the_encoder():
    enc = JsonFormatter()._encoder
    assert enc.redact_string("token=a&b=2&Password=x", True) == (
        f"token={REDACTED}&b=2&Password={REDACTED}"
    )
    assert enc.redact_string("plain", True) == "plain"
    assert enc.redact_string("x=1é&secret=2😀", True) == f"x=1é&secret={REDACTED}"


# ----------------------------------------------------------------------------- one line


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85", "\n", "\r"])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_record_stays_one_line_without_ensure_ascii(char, indent):
    f = JsonFormatter(json_ensure_ascii=False, json_indent=indent)
    text = f.format(record(f"a{char}b", note=f"é{char}", **{f"k{char}": 1}))
    # str.splitlines() splits at all of these; indent adds its own, expected line breaks.
    if indent is None:
        assert text.splitlines() == [text]
    else:
        assert all(char not in ln for ln in text.splitlines())
    data = json.loads(text)
    assert data["message"] == f"a{char}b" and data["note"] == f"é{char}"
    assert "é" in text  # still unescaped where it is safe


def test_runserver_access_lines_are_redacted_in_message_and_request_path():
    import socket

    sock = socket.socket()
    try:
        r = record('"%s" %s %s', ("GET /cb?access_token=abc&x=1 HTTP/1.1", "200", "5"),
                   request=sock, status_code=200)
        r.name = "django.server"
        out = line(JsonFormatter(), r)
    finally:
        sock.close()
    assert out["message"] == f'"GET /cb?access_token={REDACTED}&x=1 HTTP/1.1" 200 5'
    assert out["request"]["path"] == f"/cb?access_token={REDACTED}&x=1"
