"""Fetches Django's own cache test suite (tests/cache/ of the installed Django's source
distribution) so that its ``BaseCacheTests`` can run against FastCache.

The sdist is fetched once with ``pip download --no-binary :all: --no-deps`` and the
``tests/cache`` package is extracted under ``build/django-tests/<version>/``, which is put
on ``sys.path``: the suite is then importable as ``cache.tests``, its app label ``cache``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import django

ROOT = Path(__file__).resolve().parent.parent
VERSION = django.get_version()
TARGET = ROOT / "build" / "django-tests" / VERSION


def sdist() -> Path:
    """The installed Django's source distribution, downloaded once into build/."""
    sdist_dir = ROOT / "build" / "django-sdist"
    path = sdist_dir / f"django-{VERSION}.tar.gz"
    if not path.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
             "--no-deps", "--dest", str(sdist_dir), f"django=={VERSION}"],
            check=True, timeout=300,
        )
    return path


def extract(inside: str, dest: Path, recursive: bool = False) -> None:
    """Writes the sdist's files under ``tests/<inside>`` (its direct files only, unless
    ``recursive``) into ``dest``."""
    prefix = f"django-{VERSION}/tests/{inside}"
    with tarfile.open(sdist()) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(prefix):
                name = member.name[len(prefix):]
                if ("/" in name and not recursive) or ".." in name.split("/"):
                    continue
                out = dest / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())


def ensure() -> Path:
    """The directory holding the ``cache`` test package; fetches it if needed."""
    package = TARGET / "cache"
    if not (package / "tests.py").exists():
        extract("cache/", package)
    return TARGET


def ensure_all() -> Path:
    """Django's whole ``tests/`` directory (``runtests.py`` and every test app), extracted
    once under build/django-tests/<version>/all/; returns that directory."""
    tests = TARGET / "all"
    marker = tests / ".complete"
    if not marker.exists():
        extract("", tests, recursive=True)
        marker.touch()
    return tests


def install() -> bool:
    """Puts the suite on sys.path; False (or a failure under CI) when it cannot be had."""
    try:
        path = ensure()
    except (OSError, subprocess.SubprocessError, tarfile.TarError) as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"could not fetch Django's cache test suite: {exc}") from exc
        sys.stderr.write(f"warning: Django's cache test suite unavailable: {exc}\n")
        return False
    sys.path.insert(0, str(path))
    return True
