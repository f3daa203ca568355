"""Atheris (libFuzzer) harness for the JSON log writer; tests/test_log_fuzz.py runs it in a
subprocess, bounded in time, and drives ``build`` with random bytes in process.

    python tests/fuzz_log.py --write-seeds DIR
    python tests/fuzz_log.py FOUND_DIR SEED_DIR -max_total_time=20 -rss_limit_mb=2048

Each input is a small program: its first byte picks the writer's options (ensure_ascii,
indent, key redaction, value patterns), the rest builds a Python value (strings of all three
storage kinds with lone surrogates and line separators, big ints, non-finite floats, bytes,
nested and self-referencing containers, odd dict keys, dates, UUIDs, Decimals) and a log
record (a message with arguments that may not fit it, extras). The writer must give one
line (without indent) of valid JSON, ASCII with ensure_ascii, equal to json.dumps for
values json.dumps writes as valid JSON, with every value under a secret key redacted; the
formatter must never raise. Anything else is a finding and stops the run.

As in tests/fuzz_decoder.py, the C++ gives libFuzzer no edges (gcc has no libFuzzer
instrumentation), so each outcome (the set of types written and the options) is mapped
onto a reserved atheris counter.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import logging
import math
import os
import struct
import sys
import uuid

import django
from django.conf import settings

if not settings.configured:
    settings.configure(SECRET_KEY="fuzz", USE_TZ=True)
    django.setup()

from django.views.debug import SafeExceptionReporterFilter  # noqa: E402
from django_fastcache.log import REDACTED, JsonFormatter  # noqa: E402

HIDDEN = SafeExceptionReporterFilter.hidden_settings
LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
FORMATTERS: dict[int, JsonFormatter] = {}


class Finding(AssertionError):
    """A writer result that breaks the contract."""


def formatter(options: int) -> JsonFormatter:
    options &= 0x1F
    f = FORMATTERS.get(options)
    if f is None:
        redact = bool(options & 4)
        f = JsonFormatter(
            "%(levelname)s %(message)s",
            json_ensure_ascii=bool(options & 1),
            json_indent=2 if options & 2 else None,
            redact_keys=None if not redact else ("api", "auth", "token", "key", "secret",
                                                 "pass", "signature", "cookie"),
            redact_key_words=("otp",) if redact else (),
            redact_values=[n for bit, n in ((8, "query"), (16, "card")) if options & bit]
            + (["email", "bearer"] if options & 16 else []),
        )
        FORMATTERS[options] = f
    return f


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def left(self) -> bool:
        return self.pos < len(self.data)


SPECIAL = ["\u2028", "\u2029", "\x85", "\n", "\x00", "\ud800", "\udfff", "😀", "é", '"', "\\",
           "?token=", "&password=", "Bearer ", "4111 1111 1111 1111", "a@b.co"]


def build_str(r: Reader) -> str:
    kind = r.byte() % 4
    raw = r.take(r.byte() % 24)
    if kind == 0:
        s = raw.decode("latin-1")
    elif kind == 1:
        s = raw.decode("utf-16-le", "surrogatepass") if len(raw) % 2 == 0 else raw.decode(
            "utf-8", "surrogateescape")
    elif kind == 2:
        s = "".join(chr(0x10000 + b * 37) for b in raw)
    else:
        s = SPECIAL[r.byte() % len(SPECIAL)] + raw.decode("utf-8", "replace")
    return s


def build_key(r: Reader) -> object:
    k = r.byte() % 8
    if k < 4:
        return build_str(r)
    if k == 4:
        return build_str(r).encode("utf-8", "surrogatepass")
    if k == 5:
        return int.from_bytes(r.take(9), "little", signed=True)
    if k == 6:
        return [None, True, False, 1.5, float("nan"), float("inf"), (1, 2)][r.byte() % 7]
    return ["password", "api_key", "X-Auth", b"secret", "otp", "otpCode", "footprint",
            "msg"][r.byte() % 8]


def build(r: Reader, depth: int = 0, parents: list | None = None) -> object:
    parents = parents if parents is not None else []
    op = r.byte() % 16
    if depth > 12 or not r.left():
        op %= 6
    if op == 0:
        return None
    if op == 1:
        return bool(r.byte() & 1)
    if op == 2:
        return int.from_bytes(r.take(r.byte() % 20), "little", signed=True)
    if op == 3:
        raw = r.take(8).ljust(8, b"\0")
        return struct.unpack("<d", raw)[0]
    if op in (4, 5):
        return build_str(r)
    if op == 6:
        return r.take(r.byte() % 16)
    if op in (7, 8):
        out: list = []
        parents.append(out)
        for _ in range(r.byte() % 5):
            out.append(build(r, depth + 1, parents))
        parents.pop()
        return out if op == 7 else tuple(out)
    if op in (9, 10):
        d: dict = {}
        parents.append(d)
        for _ in range(r.byte() % 5):
            k = build_key(r)
            try:
                d[k] = build(r, depth + 1, parents)
            except TypeError:  # an unhashable key
                pass
        parents.pop()
        return d
    if op == 11 and parents:
        return parents[r.byte() % len(parents)]  # a cycle
    if op == 12:
        return datetime.datetime(2000 + r.byte(), 1 + r.byte() % 12, 1 + r.byte() % 28,
                                 r.byte() % 24, microsecond=r.byte() * 3000,
                                 tzinfo=datetime.timezone.utc if r.byte() & 1 else None)
    if op == 13:
        return uuid.UUID(bytes=r.take(16).ljust(16, b"\0"))
    if op == 14:
        return decimal.Decimal(int.from_bytes(r.take(6), "little")) / 7
    return frozenset(x for x in (build_str(r), build_str(r)))


def _plain(v, depth: int = 0) -> bool:
    """Values json.dumps writes as the same JSON: no NaN, no lone surrogates, str keys."""
    if depth > 50:
        return False
    if v is None or isinstance(v, (bool, int)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, (list, tuple)):
        return all(_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(k) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _check_redacted(value, out, depth: int = 0) -> None:
    """Walks the input value and the parsed output together: under every str key (of a
    dict, or first in a pair) that Django's rule hides, the output holds the placeholder."""
    if depth > 100:
        return
    if isinstance(value, dict) and isinstance(out, dict):
        for k, x in list(value.items()):
            if isinstance(k, str) and k in out:
                if HIDDEN.search(k):
                    if out[k] != REDACTED:
                        raise Finding(f"the value of {k!r} is not redacted: {out[k]!r}")
                else:
                    _check_redacted(x, out[k], depth + 1)
    elif isinstance(value, (list, tuple)) and isinstance(out, list) and len(value) == len(out):
        if len(value) == 2 and isinstance(value[0], str) and HIDDEN.search(value[0]):
            if out[1] != REDACTED:
                raise Finding(f"the pair {value!r} is written as {out!r}")
            return
        for x, o in zip(value, out, strict=True):
            _check_redacted(x, o, depth + 1)


def _check_text(text: str, options: int) -> object:
    if options & 1 and not text.isascii():
        raise Finding(f"non-ASCII output with ensure_ascii: {text!r}")
    if not options & 2 and text.splitlines() != [text]:
        raise Finding(f"a record is not one line: {text!r}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Finding(f"invalid JSON {text!r}: {exc}") from exc


def one(data: bytes) -> str:
    """Runs one input; returns a short outcome label."""
    if not data:
        return "empty"
    options = data[0]
    r = Reader(data[1:])
    f = formatter(options)
    value = build(r)
    text = f._encoder.dumps(value)
    parsed = _check_text(text, options)
    plain = _plain(value)
    if options & 4:
        _check_redacted(value, parsed)
    elif plain and not options & 24:
        expected = json.dumps(value, ensure_ascii=bool(options & 1),
                              indent=2 if options & 2 else None)
        for raw, escaped in LINE_BREAKS.items():
            expected = expected.replace(raw, escaped)
        if text != expected:
            raise Finding(f"{value!r}: {text!r} != json.dumps {expected!r}")
    # A record: message, arguments that may not fit it, extras.
    msg = build_str(r)
    args = tuple(build(r, 10) for _ in range(r.byte() % 3))
    extras = build(r, 10)
    record = logging.LogRecord("fuzz", logging.INFO, __file__, 1, msg, args, None)
    if isinstance(extras, dict):
        for k, v in extras.items():
            if isinstance(k, str) and k and k not in record.__dict__:
                record.__dict__[k] = v
    line = f.format(record)
    out = _check_text(line, options)
    if not isinstance(out, dict) or "message" not in out:
        raise Finding(f"a record without its message: {line!r}")
    if options & 4:
        _check_redacted({k: v for k, v in record.__dict__.items() if k in out}, out)
    return f"{options & 0x1F}:{type(value).__name__}:{plain}:{'format_error' in out}"


# ----------------------------------------------------------------------------- libFuzzer

_POOL_SIZE = 1024
_pool: list[int] = []


def _test_one_input(data: bytes) -> None:
    outcome = one(data)
    if _pool:
        import atheris

        digest = int.from_bytes(hashlib.blake2b(outcome.encode(), digest_size=4).digest(), "big")
        atheris._trace_branch(_pool[digest % _POOL_SIZE])


def seed_inputs() -> list[bytes]:
    out = []
    for options in range(32):
        for body in [b"", b"\x04\x03\x00\x00\x00\x00\x00\xf8\x7f", b"\x09\x03\x00\x08\x04\x03",
                     b"\x07\x04\x0b\x00\x05\x03\x0b", b"\x05\x03\x05\x0e\x01\x02",
                     b"\x0a\x02\x07\x00\x04\x00\x06\x02\x01\xff", b"\x0c\x10\x01\x02\x03\x01"]:
            out.append(bytes([options]) + body)
    return out


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        os.makedirs(argv[2], exist_ok=True)
        for data in seed_inputs():
            with open(os.path.join(argv[2], hashlib.sha1(data).hexdigest()), "wb") as f:
                f.write(data)
        return
    import atheris

    _pool.extend(atheris._reserve_counter() for _ in range(_POOL_SIZE))
    atheris.Setup(argv, _test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
