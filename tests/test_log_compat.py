"""JsonFormatter against python-json-logger 4.x: the same records through both, compared as
parsed JSON (key order included) and, where the settings match, byte for byte."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import logging
import logging.config
import math
import sys
import uuid

import pytest
from django_fastcache import _core
from django_fastcache.log import JsonFormatter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonjsonlogger.json import JsonFormatter as PjlFormatter

# Compatibility runs with redaction off: python-json-logger has none.
NO_REDACT = {"redact_keys": (), "redact_key_words": (), "redact_values": ()}


def make_record(
    msg="hello %s", args=("world",), level=logging.INFO, exc_info=None, name="compat", **extra
):
    record = logging.LogRecord(
        name, level, "/srv/app/views.py", 42, msg, args, exc_info, func="view"
    )
    record.__dict__.update(extra)
    return record


def clone(record: logging.LogRecord) -> logging.LogRecord:
    copy = logging.LogRecord.__new__(logging.LogRecord)
    copy.__dict__.update(record.__dict__)
    return copy


def both(record: logging.LogRecord, **kwargs) -> tuple[str, str]:
    theirs = PjlFormatter(**kwargs).format(clone(record))
    ours = JsonFormatter(**kwargs, **NO_REDACT).format(clone(record))
    return theirs, ours


# The one deliberate difference from json.dumps: with ensure_ascii=False, NEL and the
# Unicode line and paragraph separators are escaped too, so a record stays on one line.
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def one_line(text: str) -> str:
    for raw, escaped in _LINE_BREAKS.items():
        text = text.replace(raw, escaped)
    return text


def assert_same(record: logging.LogRecord, **kwargs) -> str:
    theirs, ours = both(record, **kwargs)
    assert ours == one_line(theirs)
    prefix = kwargs.get("prefix", "")
    assert ours.startswith(prefix)
    ours = ours[len(prefix) :]
    assert list(json.loads(ours)) == list(json.loads(theirs[len(prefix) :]))  # key order
    return ours


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: list


FMTS = [
    None,
    "%(message)s",
    "%(asctime)s %(levelname)s %(name)s %(message)s",
    "{levelname} {message} {lineno}",
    "$levelname ${message} $$ ${funcName}",
    "levelname, message , missing_field",
]


@pytest.mark.parametrize("fmt", FMTS)
def test_fmt_styles_give_the_same_line(fmt):
    style = "%"
    if fmt and fmt.startswith("{"):
        style = "{"
    elif fmt and fmt.startswith("$"):
        style = "$"
    elif fmt and "," in fmt:
        style = ","
    record = make_record(user="u1", count=3)
    assert_same(record, fmt=fmt, style=style, datefmt="%Y-%m-%dT%H:%M:%S")


def test_fmt_as_a_list_and_missing_fields_are_null():
    out = assert_same(make_record(), fmt=["levelname", "message", "nope"])
    assert json.loads(out)["nope"] is None


def test_precedence_defaults_fmt_static_dict_message_extras_timestamp():
    record = make_record(
        msg={"static": "from-msg", "m": 1, "dup": "msg"},
        args=(),
        dup="extra",
        timestamp="extra-ts",
        level_extra=1,
    )
    kwargs = dict(
        fmt="%(levelname)s %(message)s",
        defaults={"levelname": "default", "d": 0, "static": "default"},
        static_fields={"static": "static", "s2": 2},
        timestamp=True,
    )
    out = json.loads(assert_same(record, **kwargs))
    assert out["message"] == ""
    assert out["static"] == "from-msg"
    assert out["dup"] == "extra"
    assert out["timestamp"] != "extra-ts"


def test_rename_fields_and_keep_missing():
    record = make_record(extra_a=1)
    for keep in (False, True):
        assert_same(
            record,
            fmt="%(levelname)s %(message)s",
            rename_fields={"levelname": "level", "extra_a": "a", "exc_info": "error"},
            rename_fields_keep_missing=keep,
        )


def test_reserved_attrs_and_prefix_and_timestamp_key():
    record = make_record(a=1, b=2)
    assert_same(record, reserved_attrs=["a", "msg", "args"], prefix="@cee: ", timestamp="ts")


def test_dict_message_is_merged_and_not_mutated():
    msg = {"event": "signup", "n": [1, 2]}
    record = make_record(msg=msg, args=(), exc_info=None)
    assert_same(record)
    assert msg == {"event": "signup", "n": [1, 2]}


def _exc_info():
    try:
        raise KeyError("missing")
    except KeyError:
        return sys.exc_info()


@pytest.mark.parametrize("as_array", [False, True])
def test_exc_info_and_stack_info_text(as_array):
    record = make_record(exc_info=_exc_info(), stack_info="Stack (most recent call last):\n  x")
    out = assert_same(record, exc_info_as_array=as_array, stack_info_as_array=as_array)
    text = logging.Formatter().formatException(record.exc_info)
    assert json.loads(out)["exc_info"] == (text.splitlines() if as_array else text)


def test_exc_text_only_and_dict_message_exc_info_override():
    record = make_record(exc_text="precomputed traceback")
    assert_same(record)
    record = make_record(msg={"exc_info": "mine"}, args=(), exc_info=_exc_info())
    assert json.loads(assert_same(record))["exc_info"] == "mine"


@pytest.mark.parametrize("indent", [None, 0, 2, "\t"])
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_indent_and_ensure_ascii_byte_for_byte(indent, ensure_ascii):
    record = make_record(
        nested={"a": [1, {"b": []}, {}], "é": 'ünïcödé \u2028 😀 \x7f \x00 "q" \\'},
        empty_list=[],
        empty_dict={},
    )
    assert_same(record, json_indent=indent, json_ensure_ascii=ensure_ascii)


def test_non_json_types_table():
    record = make_record(
        dt=datetime.datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=datetime.timezone.utc),
        dt_naive=datetime.datetime(1999, 12, 31),
        dt_offset=datetime.datetime(
            2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
        ),
        d=datetime.date(2020, 2, 29),
        t=datetime.time(23, 59, 59, 999999),
        u=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        dec=decimal.Decimal("-1.50E+3"),
        b=b"\x00\xfe\xff binary",
        ba=bytearray(b"abc"),
        e=Color.RED,
        e2=Color.BLUE,
        ecls=Color,
        dc=Point(1, [datetime.date(2000, 1, 1)]),
        exc=ValueError("bad value"),
        typ=int,
        s={3},
        fs=frozenset(),
        big=2**200,
        neg_big=-(2**70),
        tup=(1, "a", None),
        f=0.1,
        td=datetime.timedelta(seconds=90),
    )
    out = json.loads(assert_same(record))
    assert out["b"] == "AP7_IGJpbmFyeQ=="
    assert out["e"] == "red" and out["ecls"] == ["red", 2]
    assert out["dc"] == {"x": 1, "y": ["2000-01-01"]}
    assert out["exc"] == "ValueError: bad value"
    assert out["u"] == "12345678-1234-5678-1234-567812345678"


def test_json_default_and_json_encoder_are_honoured():
    class Thing:
        pass

    record = make_record(thing=Thing(), when=datetime.date(2020, 1, 1))
    out = assert_same(record, json_default=lambda o: f"<{type(o).__name__}>")
    assert json.loads(out)["when"] == "<date>"

    class Encoder(json.JSONEncoder):
        def default(self, o):
            return "encoded"

    assert_same(record, json_encoder=Encoder)


def test_subclass_hooks_keep_working():
    class Theirs(PjlFormatter):
        def add_fields(self, log_data, record, message_dict):
            super().add_fields(log_data, record, message_dict)
            log_data["added"] = record.levelname.lower()

        def process_log_record(self, log_data):
            log_data["processed"] = True
            return log_data

    class Ours(JsonFormatter):
        def add_fields(self, log_data, record, message_dict):
            super().add_fields(log_data, record, message_dict)
            log_data["added"] = record.levelname.lower()

        def process_log_record(self, log_data):
            log_data["processed"] = True
            return log_data

    record = make_record(x=1)
    theirs = Theirs(fmt="%(levelname)s").format(clone(record))
    ours = Ours(fmt="%(levelname)s", redact_keys=()).format(clone(record))
    assert ours == theirs
    assert json.loads(ours)["processed"] is True


def test_dictconfig_with_fmt_and_format_keys(tmp_path):
    for key in ("fmt", "format"):
        config = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "json": {
                    "()": "django_fastcache.log.JsonFormatter",
                    key: "%(levelname)s %(message)s",
                    "rename_fields": {"levelname": "level"},
                    "static_fields": {"service": "api"},
                }
            },
            "handlers": {"h": {"class": "logging.NullHandler", "formatter": "json"}},
            "loggers": {"compat.dictconfig": {"handlers": ["h"]}},
        }
        logging.config.dictConfig(config)
        formatter = logging.getLogger("compat.dictconfig").handlers[0].formatter
        assert isinstance(formatter, JsonFormatter)
        out = json.loads(formatter.format(make_record()))
        assert out == {"level": "INFO", "message": "hello world", "service": "api"}


# --- generated records ---------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**130), max_value=2**130)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc))
    | st.dates()
    | st.times()
    | st.uuids()
    | st.decimals(allow_nan=False, places=3)
    | st.binary(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_extra_keys = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N")), min_size=1, max_size=10
).filter(lambda k: k not in JsonFormatter().reserved_attrs and not k.startswith("_"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extras=st.dictionaries(_extra_keys, _values, max_size=6),
    message=st.text(max_size=30),
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 2]),
)
def test_generated_records_match_byte_for_byte(extras, message, ensure_ascii, indent):
    record = make_record(msg=message, args=(), **extras)
    assert_same(record, json_ensure_ascii=ensure_ascii, json_indent=indent)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_repr_matches_python(value):
    assert _core.format_float_repr(value) == repr(value)


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        1e16,
        1e15,
        9999999999999998.0,
        1e-4,
        1e-5,
        0.1,
        1 / 3,
        5e-324,
        sys.float_info.max,
        -1.5e-7,
        123456789.125,
        1e22,
        1e100,
        2.5e-300,
    ],
)
def test_float_repr_edges(value):
    assert _core.format_float_repr(value) == repr(value)
    assert math.isfinite(value)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.booleans())
def test_string_escaping_matches_json_dumps(text, ensure_ascii):
    ours = JsonFormatter(json_ensure_ascii=ensure_ascii, **NO_REDACT)._encoder.dumps(text)
    if ensure_ascii or not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert ours == one_line(json.dumps(text, ensure_ascii=ensure_ascii))
    assert json.loads(ours) == text


@pytest.mark.parametrize("hook", ["serialize_log_record", "jsonify_log_record"])
def test_serialization_hooks_keep_working(hook):
    def upper(self, log_data):
        return getattr(super(type(self), self), hook)(log_data).upper()

    theirs_cls = type("Theirs", (PjlFormatter,), {hook: upper})
    ours_cls = type("Ours", (JsonFormatter,), {hook: upper})
    record = make_record(x="small")
    theirs = theirs_cls(prefix="p: ").format(clone(record))
    ours = ours_cls(prefix="p: ", redact_keys=()).format(clone(record))
    assert ours == theirs and '"X": "SMALL"' in ours
