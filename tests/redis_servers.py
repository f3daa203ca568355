"""Start and stop real redis-server processes for the tests, on free loopback ports.

Three shapes: a single node (:class:`RedisServer`), a Redis Cluster of three masters
(:class:`RedisCluster`) and a primary with a replica watched by three sentinels
(:class:`RedisSentinelSet`). Every process runs from the ``redis-server`` binary on PATH
with no persistence, in its own temporary directory, and is stopped by pid; the
directories are removed on exit. Under ``CI=true`` a missing binary is a test failure,
never a skip (see :func:`require_binary`).
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref

import pytest

__all__ = [
    "RedisCluster",
    "RedisSentinelSet",
    "RedisServer",
    "free_port",
    "require_binary",
    "wait_until",
]


def require_binary(name: str) -> str:
    """Path of ``name``; fails (CI) or skips (a developer's machine) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH (make test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if _port_is_free(port) and _port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns a truthy value; RuntimeError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a server still starting answers with errors
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


# Every started process, so an interrupted session (Ctrl-C, a crash in a fixture) does not
# leave servers behind.
_running: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_running):
        server.close()


class _Started:
    """Context-manager protocol of every harness here: ``with X() as x`` starts it, and
    stops it (by pid) on exit or when starting fails half-way."""

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer(_Started):
    """One redis-server process. ``extra`` are extra ``--option value`` arguments.

    ``unix_socket=True`` also listens on a Unix socket (:attr:`unix_path`). The port stays
    the same across :meth:`restart`, so clients can reconnect to it.
    """

    def __init__(
        self, *extra: str, port: int | None = None, unix_socket: bool = False,
        password: str | None = None,
    ) -> None:
        self.binary = require_binary("redis-server")
        self.port = port or free_port()
        self.extra = list(extra)
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="fastcache-redis-")
        self.unix_path = os.path.join(self.dir, "redis.sock") if unix_socket else None
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _args(self) -> list[str]:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--logfile", os.path.join(self.dir, "redis.log"),
            # Replicas sync at once instead of after the default 5 s batching delay.
            "--repl-diskless-sync-delay", "0",
        ]
        if self.unix_path:
            args += ["--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        return args + self.extra

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def ping(self) -> bool:
        """True once the server answers on its port (a NOAUTH refusal is an answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(16)
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def client(self, **kwargs):
        """A redis-py client to this node for test assertions (the caller closes it)."""
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password,
            socket_timeout=5, **kwargs,
        )

    def command(self, *args):
        """Run one command on a short-lived connection and return the reply."""
        client = self.client()
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections accepted by the kernel, no replies)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown handshake with replicas or sentinels."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        _running.discard(self)

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""



def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(text: bytes | str | dict) -> dict[str, str]:
    """``INFO``/``CLUSTER INFO`` reply (text, or redis-py's parsed dict) as a dict of str."""
    if isinstance(text, dict):
        return {_text(k): _text(v) for k, v in text.items()}
    if isinstance(text, bytes):
        text = text.decode()
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


class RedisCluster(_Started):
    """A Redis Cluster of ``masters`` nodes (3 at least), each with a replica if ``replicas``.

    Nodes listen on ports whose bus port (port + 10000) is free too. :meth:`start` returns
    once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and every node knows
    every other, which takes about a second for three masters.
    """

    def __init__(self, masters: int = 3, replicas: bool = False, node_timeout_ms: int = 5000):
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.redis_cli = require_binary("redis-cli")
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        count = masters * (2 if replicas else 1)
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                port=free_cluster_port(),
            )
            for _ in range(count)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming every node as a seed."""
        seeds = ",".join(f"{host}:{port}" for host, port in self.startup_nodes)
        return f"redis+cluster://{seeds}"

    def masters(self) -> list[RedisServer]:
        """Nodes whose role is master right now."""
        return [n for n in self.nodes
                if _info(n.command("INFO", "replication"))["role"] == "master"]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        create = [
            self.redis_cli, "--cluster", "create",
            *(f"127.0.0.1:{node.port}" for node in self.nodes),
            "--cluster-replicas", "1" if self.replicas else "0", "--cluster-yes",
        ]
        result = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}")
        total = str(len(self.nodes))

        def converged() -> bool:
            for node in self.nodes:
                info = _info(node.command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != total:
                    return False
            return True

        wait_until(converged, timeout, "cluster_state:ok on every node")
        if self.replicas:
            wait_until(self._replicas_synced, timeout, "every replica in sync")
        return self

    def _replicas_synced(self) -> bool:
        for node in self.nodes:
            info = _info(node.command("INFO", "replication"))
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def flush(self) -> None:
        for node in self.masters():
            node.command("FLUSHALL")

    def close(self) -> None:
        for node in self.nodes:
            node.close()



class RedisSentinel(RedisServer):
    """One sentinel process monitoring ``service`` at ``primary_port``."""

    def __init__(
        self, service: str, primary_port: int, *, quorum: int, down_after_ms: int,
        failover_timeout_ms: int, auth_pass: str | None, sentinel_password: str | None,
    ) -> None:
        super().__init__()
        self.sentinel_password = sentinel_password
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {os.path.join(self.dir, 'redis.log')}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} 1",
        ]
        if auth_pass:
            lines.append(f"sentinel auth-pass {service} {auth_pass}")
        if sentinel_password:
            # The sentinels' own password, which they also use to talk to each other.
            lines += [f"requirepass {sentinel_password}",
                      f"sentinel sentinel-pass {sentinel_password}"]
        self.config = os.path.join(self.dir, "sentinel.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _args(self) -> list[str]:
        return [self.binary, self.config, "--sentinel"]

    def client(self, **kwargs):
        import redis

        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.sentinel_password,
            socket_timeout=5, **kwargs,
        )


class RedisSentinelSet(_Started):
    """A primary and a replica of service ``service``, watched by ``sentinels`` sentinels.

    Failure detection is fast (``down_after_ms``) so :meth:`kill_primary` returns within a
    few seconds, once every sentinel names the former replica as the primary and that
    node says it is a master. ``password`` protects the data nodes; ``sentinel_password``
    the sentinels themselves (clients pass it in ``SENTINEL_KWARGS``).
    """

    service = "mymaster"

    def __init__(
        self, sentinels: int = 3, down_after_ms: int = 500, failover_timeout_ms: int = 3000,
        password: str | None = None, sentinel_password: str | None = None,
    ) -> None:
        self.password = password
        self.sentinel_password = sentinel_password
        self.primary = RedisServer(password=password)
        self.replica: RedisServer | None = RedisServer(
            "--replicaof", "127.0.0.1", str(self.primary.port), password=password
        )
        self.retired: list[RedisServer] = []
        self.sentinels = [
            RedisSentinel(
                self.service, self.primary.port, quorum=sentinels // 2 + 1,
                down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms,
                auth_pass=password, sentinel_password=sentinel_password,
            )
            for _ in range(sentinels)
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels' (host, port) pairs, as ``OPTIONS["SENTINELS"]`` takes them."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def options(self) -> dict:
        """Cache ``OPTIONS`` that reach this set."""
        opts: dict = {"SENTINELS": self.addresses, "SENTINEL_SERVICE": self.service}
        if self.sentinel_password:
            opts["SENTINEL_KWARGS"] = {"password": self.sentinel_password}
        return opts

    def start(self, timeout: float = 30.0) -> RedisSentinelSet:
        self.primary.start()
        assert self.replica is not None
        self.replica.start()
        replica = self.replica
        wait_until(
            lambda: _info(replica.command("INFO", "replication")).get("master_link_status") == "up",
            timeout, "the replica to sync",
        )
        for sentinel in self.sentinels:
            sentinel.start()
        others = str(len(self.sentinels) - 1)

        def ready() -> bool:
            for sentinel in self.sentinels:
                state = self._master_state(sentinel)
                if state.get("num-other-sentinels") != others or state.get("num-slaves") != "1":
                    return False
            return True

        wait_until(ready, timeout, "the sentinels to discover each other and the replica", 0.05)
        return self

    def _master_state(self, sentinel: RedisSentinel) -> dict[str, str]:
        reply = sentinel.command("SENTINEL", "MASTER", self.service)
        if isinstance(reply, dict):
            return {_text(k): _text(v) for k, v in reply.items()}
        items = [_text(x) for x in reply]
        return dict(zip(items[::2], items[1::2], strict=True))

    def primary_address(self, sentinel: RedisSentinel | None = None) -> tuple[str, int]:
        host, port = (sentinel or self.sentinels[0]).command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        )
        return (_text(host), int(port))

    def kill_primary(self, timeout: float = 30.0) -> float:
        """SIGKILL the primary, wait for the replica's promotion; returns the seconds taken."""
        assert self.replica is not None, "no replica left to promote"
        started = time.monotonic()
        old, new = self.primary, self.replica
        old.kill()

        def promoted() -> bool:
            if any(self.primary_address(s)[1] != new.port for s in self.sentinels):
                return False
            return _info(new.command("INFO", "replication"))["role"] == "master"

        wait_until(promoted, timeout, "the sentinels to promote the replica", 0.05)
        self.primary, self.replica = new, None
        self.retired.append(old)
        return time.monotonic() - started

    def flush(self) -> None:
        self.primary.command("FLUSHALL")

    def close(self) -> None:
        for server in [*self.sentinels, self.primary, self.replica, *self.retired]:
            if server is not None:
                server.close()

