"""The ORM cache's scenarios (test_orm.py) on a real PostgreSQL server, started here on a
free port from the Debian postgresql binaries (never the machine's own server)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from redis_servers import free_port, wait_until

HERE = Path(__file__).resolve().parent


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or \
        ([shutil.which(name)] if shutil.which(name) else [])
    return found[-1] if found else None


class PostgresServer:
    """initdb + pg_ctl in a temporary directory, on 127.0.0.1:<free port>, trust auth.
    As root, the server runs as the ``postgres`` user (initdb refuses root)."""

    def __init__(self) -> None:
        self.initdb = pg_bin("initdb")
        self.pg_ctl = pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            msg = "PostgreSQL binaries (initdb, pg_ctl) not found: `make test` installs them"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastcache-pg-")
        self.data = os.path.join(self.dir, "data")

    def _run(self, *args: str) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            prefix = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def __enter__(self) -> PostgresServer:
        self._run(self.initdb, "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        self._run(self.pg_ctl, "-D", self.data, "-o", opts, "-l",
                  os.path.join(self.dir, "log"), "-w", "-t", "60", "start")
        import psycopg

        def up() -> bool:
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname="postgres", connect_timeout=1).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(up, 30, "PostgreSQL to accept connections")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._run(self.pg_ctl, "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        yield server


def run_orm_scenarios(**env: str) -> None:
    """Runs test_orm.py's scenarios in a fresh interpreter with ``env`` added (the
    settings they read at start-up); every one must pass, none may skip."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_orm.py"), "-q", "-x",
         "-p", "no:cacheprovider"], cwd=HERE.parent, env={**os.environ, **env},
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout


@pytest.mark.slow
def test_orm_scenarios_on_postgresql(postgres):
    run_orm_scenarios(ORM_TEST_PG_PORT=str(postgres.port))
