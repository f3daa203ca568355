"""Microseconds per record for django_fastcache.log.JsonFormatter against python-json-logger
(json and orjson formatters), a json.dumps formatter and the logging.Formatter floor.

Run: .venv/bin/python benchmarks/bench_log.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import json
import logging
import platform
import sys
import time
import uuid
from importlib.metadata import version

from django_fastcache.log import JsonFormatter
from pythonjsonlogger.json import JsonFormatter as PjlJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter as PjlOrjsonFormatter


class JsonDumpsFormatter(logging.Formatter):
    """What a site writes by hand: the message and extras into a dict, json.dumps(default=str)."""

    _reserved = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        data = {"message": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in self._reserved:
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def make_records() -> dict[str, logging.LogRecord]:
    def record(msg, args=(), exc_info=None, **extra):
        r = logging.LogRecord("bench", logging.INFO, __file__, 42, msg, args, exc_info)
        r.__dict__.update(extra)
        return r

    ten_extras = {
        "user_id": 12345,
        "path": "/api/v1/orders/9876",
        "method": "POST",
        "status": 201,
        "duration_ms": 12.375,
        "cached": False,
        "when": datetime.datetime(2024, 5, 17, 13, 45, 12, 123456, tzinfo=datetime.timezone.utc),
        "trace_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "amount": decimal.Decimal("199.99"),
        "meta": {"region": "eu-west-1", "items": [1, 2, 3], "flags": {"beta": True}},
    }
    try:
        raise ValueError("payment declined")
    except ValueError:
        exc = sys.exc_info()
    return {
        "plain": record("user %s logged in", ("alice",)),
        "10 extras": record("order created", **ten_extras),
        "exc_info": record("payment failed", exc_info=exc),
    }


def fresh(record: logging.LogRecord) -> logging.LogRecord:
    # A new record per call, as in real logging (formatters cache the message and the
    # exception text on the record).
    r = logging.LogRecord.__new__(logging.LogRecord)
    r.__dict__.update(record.__dict__)
    return r


def per_record_us(
    formatter: logging.Formatter, record: logging.LogRecord, n: int, handlers: int = 1
) -> float:
    """Time to format a new record `handlers` times, minus the time to make the record.

    Each record is made right before it is formatted, as logging does, so it is in the CPU
    cache; formatting a pre-built batch of thousands would mostly measure cache misses.
    """
    fmt = formatter.format

    def make_and_format() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            r = fresh(record)
            for _ in range(handlers):
                fmt(r)
        return time.perf_counter() - t0

    def make_only() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            r = fresh(record)
            for _ in range(handlers):
                len(r.__dict__)
        return time.perf_counter() - t0

    best = min(make_and_format() for _ in range(3))
    base = min(make_only() for _ in range(3))
    return max(best - base, 0.0) / n * 1e6


FOUR_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def run_group(
    formatters: dict[str, logging.Formatter], cases: list, n: int
) -> dict[str, dict[str, float]]:
    # Rounds interleave the formatters so load from other processes hits them all alike.
    results: dict[str, dict[str, float]] = {name: {} for name in formatters}
    for _ in range(3):
        for name, f in formatters.items():
            for case, rec, handlers in cases:
                us = per_record_us(f, rec, n if case != "exc_info x2" else n // 10, handlers)
                results[name][case] = min(us, results[name].get(case, float("inf")))
    return results


def print_table(title: str, results: dict[str, dict[str, float]], ours_name: str,
                cases: list[str]) -> None:
    ours = results[ours_name]
    print(title)
    header = (
        f"{'formatter':44}"
        + "".join(f"{c:>13}" for c in cases)
        + "".join(f"{'x ' + c:>14}" for c in cases)
    )
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = "".join(f"{row[c]:13.2f}" for c in cases)
        ratios = "".join(f"{row[c] / ours[c]:14.2f}" for c in cases)
        print(f"{name:44}{cells}{ratios}")
    print("(x = that formatter's time / django_fastcache's; > 1 means django_fastcache is faster)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    args = parser.parse_args()
    n = 1000 if args.quick else 10000

    records = make_records()
    cases = [(name, rec, 1) for name, rec in records.items()]
    cases.append(("exc_info x2", records["exc_info"], 2))
    case_names = [case for case, _, _ in cases]

    default = run_group(
        {
            "django_fastcache JsonFormatter": JsonFormatter(),
            "python-json-logger JsonFormatter": PjlJsonFormatter(),
            "python-json-logger OrjsonFormatter": PjlOrjsonFormatter(),
            "json.dumps formatter": JsonDumpsFormatter(),
            "logging.Formatter('%(message)s')": logging.Formatter("%(message)s"),
        },
        cases,
        n,
    )
    # The format most sites use: asctime costs a localtime + strftime per record in
    # Python's formatTime, which django_fastcache does in C++ (cached per second).
    four = run_group(
        {
            "django_fastcache JsonFormatter (4 fields)": JsonFormatter(FOUR_FIELDS),
            "python-json-logger JsonFormatter (4 fields)": PjlJsonFormatter(FOUR_FIELDS),
            "python-json-logger Orjson (4 fields)": PjlOrjsonFormatter(FOUR_FIELDS),
            "logging.Formatter(4 fields), plain text": logging.Formatter(FOUR_FIELDS),
        },
        cases,
        n,
    )

    print(
        f"Python {platform.python_version()}, python-json-logger {version('python-json-logger')}, "
        f"orjson {version('orjson')}, django-fastcache {version('django-fastcache')}; "
        f"best of 3 rounds x 3 x {n} records, us/record"
    )
    print_table("Default format (message and extras):", default,
                "django_fastcache JsonFormatter", case_names)
    print()
    print_table(f"Format {FOUR_FIELDS!r}:", four,
                "django_fastcache JsonFormatter (4 fields)", case_names)
    print()
    ours = default["django_fastcache JsonFormatter"]
    pjl = default["python-json-logger JsonFormatter"]
    print(
        "default format, speed-up vs python-json-logger: "
        f"plain {pjl['plain'] / ours['plain']:.2f}x, "
        f"10 extras {pjl['10 extras'] / ours['10 extras']:.2f}x, "
        f"exc_info {pjl['exc_info'] / ours['exc_info']:.2f}x, "
        f"exc_info written by 2 handlers {pjl['exc_info x2'] / ours['exc_info x2']:.2f}x"
    )
    ours = four["django_fastcache JsonFormatter (4 fields)"]
    pjl = four["python-json-logger JsonFormatter (4 fields)"]
    floor = four["logging.Formatter(4 fields), plain text"]
    print(
        f"4 fields, speed-up vs python-json-logger: plain {pjl['plain'] / ours['plain']:.2f}x "
        f"(target 3x), 10 extras {pjl['10 extras'] / ours['10 extras']:.2f}x (target 4x); "
        f"vs logging.Formatter plain text: plain {floor['plain'] / ours['plain']:.2f}x, "
        f"10 extras {floor['10 extras'] / ours['10 extras']:.2f}x (target >= 1.0x)"
    )


if __name__ == "__main__":
    main()
