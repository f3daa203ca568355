"""formatTime in C++ against logging.Formatter.formatTime: random timestamps, time zones
(TZ set in a subprocess), DST transitions, datefmt values, both converters, the default
time and millisecond formats, and the per-second cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
from django_fastcache.log import JsonFormatter

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # a 30-minute DST shift
    "Asia/Kolkata",  # a half-hour offset, no DST
    "America/St_Johns",
    "Pacific/Chatham",
    "EST5EDT,M3.2.0,M11.1.0",  # a POSIX rule, no zone file
]

# The worker: formats records with ours and with logging.Formatter.formatTime under every
# datefmt, converter and default format, and prints the mismatches as JSON.
WORKER = textwrap.dedent(
    r"""
    import json, logging, random, sys, time
    from django_fastcache.log import JsonFormatter

    DATEFMTS = [None, "", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%a %b %d %H:%M:%S %Z %Y",
                "%c", "%x %X", "%j %U %W %u %w %G %V %y %e %I %p", "%%", "%s", "%Z%z", "%D %T %R",
                "plain text", "%H:%M:%S.%f"]
    MSEC = ["%s,%03d", "%s.%03d", None, "%s:%d"]
    TIME_FORMATS = ["%Y-%m-%d %H:%M:%S", "%H:%M", "%Z"]

    def stamps(rng):
        out = [0.0, 1.0, 0.9995, 59.999999, 1e9, 1_700_000_000.123456, 2_147_483_647.5,
               4_102_444_800.0, 86_399.999, 951_782_400.5]
        # DST transitions of the years 2000-2030 in the zone, found by scanning, and the
        # seconds around each.
        t = 946_684_800
        step = 3600
        prev = time.localtime(t).tm_gmtoff
        while t < 1_800_000_000:
            t += step
            off = time.localtime(t).tm_gmtoff
            if off != prev:
                for d in (-3601, -1, -0.001, 0, 0.5, 1, 1800, 3599, 3600):
                    out.append(t - step + d)
                    out.append(t + d)
                prev = off
        out += [rng.uniform(0, 2_000_000_000) for _ in range(300)]
        return out

    rng = random.Random(int(sys.argv[1]))
    STAMPS = stamps(rng)
    mismatches = []
    checked = 0
    for converter in (time.localtime, time.gmtime):
        for datefmt in DATEFMTS:
            for msec in MSEC:
                for tfmt in TIME_FORMATS:
                    if datefmt and (msec != MSEC[0] or tfmt != TIME_FORMATS[0]):
                        continue  # the defaults are not used with a datefmt
                    ours = JsonFormatter("%(asctime)s", datefmt=datefmt)
                    ours.converter = converter
                    ours.default_msec_format = msec
                    ours.default_time_format = tfmt
                    ref = logging.Formatter(datefmt=datefmt)
                    ref.converter = converter
                    ref.default_msec_format = msec
                    ref.default_time_format = tfmt
                    for t in STAMPS:
                        r = logging.LogRecord("t", 20, "f.py", 1, "m", (), None)
                        r.created = t
                        r.msecs = float(int((t - int(t)) * 1000))
                        got = json.loads(ours.format(r))["asctime"]
                        want = ref.formatTime(r, datefmt)
                        checked += 1
                        if got != want:
                            mismatches.append(
                                [t, datefmt, msec, tfmt, converter.__name__, got, want]
                            )
    print(json.dumps({"checked": checked, "mismatches": mismatches[:20]}))
    """
)


@pytest.mark.parametrize("zone", ZONES)
def test_format_time_matches_python_in_every_zone(zone):
    env = {**os.environ, "TZ": zone}
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(len(zone))], env=env, capture_output=True,
        text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(proc.stdout)
    assert result["mismatches"] == []
    assert result["checked"] > 5000


def _record(created: float) -> logging.LogRecord:
    r = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    r.created = created
    r.msecs = float(int((created - int(created)) * 1000))
    return r


def test_the_python_method_is_not_called_on_the_fast_path(monkeypatch):
    f = JsonFormatter("%(asctime)s")
    r = _record(1_700_000_000.25)
    want = logging.Formatter().formatTime(r)

    def refuse(*args):
        raise AssertionError("time.strftime was called")

    monkeypatch.setattr(time, "strftime", refuse)
    monkeypatch.setattr(time, "localtime", time.localtime)  # the same object
    assert json.loads(f.format(_record(1_700_000_000.25)))["asctime"] == want


def test_an_overridden_format_time_or_converter_is_used():
    class Mine(JsonFormatter):
        def formatTime(self, record, datefmt=None):
            return "mine"

    assert json.loads(Mine("%(asctime)s").format(_record(5.0)))["asctime"] == "mine"
    f = JsonFormatter("%(asctime)s", datefmt="%Y")
    f.converter = lambda t: time.gmtime(0)
    assert json.loads(f.format(_record(1_700_000_000.0)))["asctime"] == "1970"
    f = JsonFormatter("%(asctime)s")
    f.formatTime = lambda record, datefmt=None: "instance"
    assert json.loads(f.format(_record(5.0)))["asctime"] == "instance"


def test_the_cache_follows_changes_of_format_and_converter():
    f = JsonFormatter("%(asctime)s", datefmt="%H:%M:%S %Z")
    r = _record(1_700_000_000.5)
    local = json.loads(f.format(r))["asctime"]
    assert local == logging.Formatter(datefmt="%H:%M:%S %Z").formatTime(r, "%H:%M:%S %Z")
    f.converter = time.gmtime
    assert json.loads(f.format(_record(1_700_000_000.5)))["asctime"] == "22:13:20 GMT"
    f.datefmt = "%Y"
    assert json.loads(f.format(_record(1_700_000_000.5)))["asctime"] == "2023"
    assert logging.Formatter.converter is time.localtime  # the class is untouched
    g = JsonFormatter("%(asctime)s", datefmt="%S")
    assert [json.loads(g.format(_record(t)))["asctime"] for t in (10.1, 10.9, 11.0, 10.5)] == [
        "10", "10", "11", "10"
    ]


def test_odd_created_values_fall_back_to_python():
    f = JsonFormatter("%(asctime)s", datefmt="%Y")
    r = _record(0.0)
    r.created = 1_700_000_000  # an int
    assert json.loads(f.format(r))["asctime"] == "2023"
    r = _record(0.0)
    r.created = float("nan")
    with pytest.raises(ValueError):
        f.format(r)  # what logging.Formatter.formatTime raises too
    r = _record(0.0)
    r.created = 1e300
    with pytest.raises((OverflowError, OSError, ValueError)):
        logging.Formatter().formatTime(r, "%Y")
    with pytest.raises((OverflowError, OSError, ValueError)):
        f.format(r)


def test_non_ascii_formats_go_through_python():
    f = JsonFormatter("%(asctime)s", datefmt="%Y年%m月")
    r = _record(1_700_000_000.0)
    assert json.loads(f.format(r))["asctime"] == logging.Formatter().formatTime(r, "%Y年%m月")
