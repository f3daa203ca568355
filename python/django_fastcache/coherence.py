"""Keeps the L1 in front of Redis coherent across processes with Redis server-assisted
client-side caching: one listener per L1 store per process, on connections that track the
cache's key prefixes in broadcast mode (one connection per primary on a cluster).

The listener is a native thread of the C++ core (``src/core/listener.hpp``): it reads
the tracking connections and drops keys from the L1 store itself, so a busy interpreter
never delays an invalidation. This module only configures it (addresses, credentials,
prefixes), starts it on first use and after a fork, follows a Sentinel failover or a
cluster's slot map from a small Python thread (the one part that needs redis-py), and
reports its state. Over TLS (``rediss://`` or ``ssl`` options) the native listener has no
TLS of its own: the Python listener below (:class:`PythonInvalidationListener`, the same
rules on a Python thread, so invalidations may wait for the GIL) takes its place.

How a connection is wired (RESP2): it asks for its ``CLIENT ID``, enables
``CLIENT TRACKING on REDIRECT <own id> BCAST PREFIX <p>...`` on itself (a connection may
redirect to itself; once subscribed it could not send the command any more), then
``SUBSCRIBE __redis__:invalidate``. Redis then sends it the name of every key under a
tracked prefix that any client changes, or that expires or is evicted, and a null for a
flush. ``NOLOOP`` is not used: it only silences writes made on the tracking connection
itself, and this process writes on other connections, so its own writes come back too;
the writer has already updated its own L1 (``Engine.l1_write``) and the message just
drops that copy, which costs one extra read later, never a stale value.

The L1 is only used while every listener connection is subscribed ("up"). When one drops,
misses its health check (a PING answered within ``PONG_DEADLINE``), or the topology
changes (the Sentinel primary or the cluster's slot map differs from the one it is
connected to), the store is cleared and marked unusable ("resetting"): reads go to Redis
until the listener has reconnected and resubscribed, which clears the store once more,
since messages may have been missed meanwhile. "down" means no listener runs in this
process (not used yet, or a forked child before its first use): the L1 is bypassed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

from . import _core

__all__ = ["InvalidationListener", "PythonInvalidationListener", "listener_for"]

logger = logging.getLogger("django_fastcache.redis")

CHANNEL = b"__redis__:invalidate"
PING_INTERVAL = 0.5  # seconds between health checks on each listener connection
PONG_DEADLINE = 1.0  # a PING unanswered this long means the connection is dead
TOPOLOGY_INTERVAL = 1.0  # seconds between checks of the Sentinel primary / cluster slots
IDLE_EXIT = 30.0  # a listener that cannot connect and was not asked for stops retrying

_listeners: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def _with_prefix(prefixes: list[bytes], prefix: str) -> list[bytes] | None:
    """The tracked prefixes once ``prefix`` is among them (one it extends is dropped), or
    None when a tracked prefix already covers it."""
    wanted = prefix.encode("utf-8", "surrogatepass")
    if any(wanted.startswith(p) for p in prefixes):
        return None
    return sorted([p for p in prefixes if not p.startswith(wanted)] + [wanted])


def listener_for(store: _core.Store,
                 clients: Any) -> InvalidationListener | PythonInvalidationListener:
    """The listener of ``store`` in this process (created on first call): the native one,
    or the Python one when the connection needs TLS."""
    with _registry_lock:
        listener = _listeners.get(id(store))
        if listener is None or listener.store is not store:
            kind = PythonInvalidationListener if _needs_tls(clients) else InvalidationListener
            listener = _listeners[id(store)] = kind(store, clients)
        return listener


def _needs_tls(clients: Any) -> bool:
    config = clients.config
    return bool(config.tls or config.connection_kwargs.get("ssl"))


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for listener in list(_listeners.values()):
        listener._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Link:
    """One subscribed connection: a redis-py connection of its own (never from a pool),
    read through redis-py's public API only (``can_read``, ``read_response``)."""

    __slots__ = ("conn", "name", "ping_sent", "pings")

    def __init__(self, conn: Any, name: str) -> None:
        self.conn = conn
        self.name = name
        self.ping_sent: float | None = None
        self.pings = 0

    def close(self) -> None:
        try:
            self.conn.disconnect()
        except Exception:  # already broken: nothing more to release
            pass


class InvalidationListener:
    """Configures and watches the native listener of one L1 store; see the module docstring.

    Thread-safe. ``track(prefix)``, ``suspect()`` and ``ensure_running()`` may be called from
    any thread. In a forked child the native thread does not exist (the core's fork handler
    marks the store bypassed; this module's empties it); the child's first
    ``ensure_running()`` starts exactly one new thread on new connections.
    """

    kind = "native"

    def __init__(self, store: _core.Store, clients: Any) -> None:
        self.store = store
        self.clients = clients
        self._lock = threading.Lock()
        self._prefixes: list[bytes] = []  # minimal cover: none is a prefix of another
        self._pid: int | None = None  # the process whose listener was started
        self._endpoints: list[tuple[str, int, str]] = []
        self._topology: Any = None
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._retry_at = 0.0  # after a failed start: when to try again (monotonic)
        self.last_error = ""
        store.reset(False)

    # -- called by the cache

    def track(self, prefix: str) -> None:
        """Makes sure keys starting with ``prefix`` are tracked. A new prefix takes the
        L1 down at once (keys under it were not tracked until now) and restarts tracking."""
        with self._lock:
            merged = _with_prefix(self._prefixes, prefix)
            if merged is None:
                return
            self._prefixes = merged
            if self._pid == os.getpid():
                self._configure()

    def suspect(self) -> None:
        """Something went wrong talking to Redis elsewhere: the L1 goes down at once and
        the listener reconnects (and empties it again) before it is used again."""
        if self._pid == os.getpid() and self.store.usable:
            self.store.listener_restart()

    @property
    def prefixes(self) -> list[bytes]:
        return list(self._prefixes)

    @property
    def state(self) -> str:
        return self.store.listener_stats()["state"]

    def ensure_running(self) -> None:
        """Starts the native listener if this process has none (first use, or the first
        use after a fork)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid() or time.monotonic() < self._retry_at:
                return
            self._retry_at = time.monotonic() + TOPOLOGY_INTERVAL
            try:
                self._endpoints, self._topology = self._resolve()
            except Exception as exc:  # Redis unreachable: the L1 stays bypassed, retried later
                self.last_error = f"{type(exc).__name__}: {exc}"
                return
            self._configure()
            self.store.listener_start()
            self._pid = os.getpid()
            if self.clients.mode in ("sentinel", "cluster"):
                self._watch_stop = threading.Event()
                self._watcher = threading.Thread(
                    target=self._watch, name=f"fastcache-topology-{id(self.store):x}",
                    daemon=True)
                self._watcher.start()

    def stats(self) -> dict[str, Any]:
        st = self.store.listener_stats()
        return {
            "l1_listener": st["state"],
            "l1_listener_kind": self.kind,
            "l1_listener_connections": st["connections"],
            "l1_invalidation_messages": st["messages"],
            "l1_invalidated_keys": st["keys"],
            "l1_flushes": st["flushes"],
            "l1_listener_downs": st["downs"],
            "l1_listener_ups": st["ups"],
            "l1_listener_starts": st["starts"],
            "l1_listener_error": st["last_error"] or self.last_error,
            "l1_tracked_prefixes": [p.decode("utf-8", "replace") for p in self._prefixes],
        }

    def close(self) -> None:
        """Stops the native thread and the topology watcher (tests; never needed at exit)."""
        self._watch_stop.set()
        self.store.listener_stop()
        self._pid = None

    def _forget_after_fork(self) -> None:
        # The core's fork handler already dropped the thread and closed (never shut down)
        # the copies of its sockets; here the copied store is emptied, with the GIL.
        self._lock = threading.Lock()
        self._pid = None
        self._retry_at = 0.0
        self._watcher = None
        self._watch_stop = threading.Event()
        self.store.reset(False)

    # -- configuration

    def _configure(self) -> None:
        config = self.clients.config
        kwargs = config.connection_kwargs
        timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 1.0
        self.store.listener_configure(
            endpoints=self._endpoints,
            username=config.username or "",
            password=config.password or "",
            prefixes=[p.decode("utf-8", "surrogatepass") for p in (self._prefixes or [b""])],
            connect_timeout=float(timeout),
            ping_interval=PING_INTERVAL,
            pong_deadline=PONG_DEADLINE,
        )

    def _resolve(self) -> tuple[list[tuple[str, int, str]], Any]:
        """The primaries to listen to, and the topology they were found in."""
        config = self.clients.config
        if self.clients.mode == "single":
            node = config.nodes[0]
            return [(node.host or "", int(node.port or 0), node.path or "")], None
        topology = _topology_now(self.clients)
        if self.clients.mode == "sentinel":
            host, port = topology
            return [(str(host), int(port), "")], topology
        return [(str(h), int(p), "") for h, p in sorted({tuple(v) for _, v in topology})], topology

    def _watch(self) -> None:
        """Follows a Sentinel failover or a cluster slot move: new primaries, new links."""
        stop = self._watch_stop
        while not stop.wait(TOPOLOGY_INTERVAL):
            if self._pid != os.getpid():
                return
            try:
                endpoints, topology = self._resolve()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.suspect()
                continue
            if topology != self._topology:
                logger.warning("the Redis topology changed (failover or slot move): the L1 "
                               "is bypassed until the listener has reconnected")
                with self._lock:
                    self._endpoints, self._topology = endpoints, topology
                    self._configure()


def _topology_now(clients: Any) -> Any:
    """The Sentinel primary's address or the cluster's slot map (start, end, primary)."""
    client = clients.client(write=True)
    if clients.mode == "sentinel":
        return tuple(client.connection_pool.get_master_address())
    slots = client.execute_command("CLUSTER SLOTS")
    return sorted((tuple(k), tuple(v["primary"])) for k, v in slots.items())


class PythonInvalidationListener:
    """Invalidates one L1 store from Redis's tracking messages on a Python thread: the
    fallback for TLS connections, which the native listener does not speak. It talks to
    Redis through redis-py's public connection API only (``connect``, ``send_command``,
    ``can_read(timeout)``, ``read_response``, ``disconnect``), so TLS is redis-py's.

    Thread-safe. ``track(prefix)`` and ``ensure_running()`` may be called from any thread;
    the work happens on one daemon thread per listener (plus one per further primary on a
    cluster: redis-py offers no socket to wait on several connections at once). After
    ``os.fork()`` the child has an empty, bypassed store and no thread; its first
    ``ensure_running()`` starts one.
    """

    def __init__(self, store: _core.Store, clients: Any) -> None:
        self.store = store
        self.clients = clients
        self._lock = threading.Lock()
        self._prefixes: list[bytes] = []  # minimal cover: none is a prefix of another
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._restart = threading.Event()
        self._last_wanted = time.monotonic()
        self.state = "down"
        self.connections = 0
        self.messages = self.keys = self.flushes = self.downs = self.ups = self.starts = 0
        self.last_error = ""
        store.reset(False)

    kind = "python"

    # -- called by the cache

    def track(self, prefix: str) -> None:
        """Makes sure keys starting with ``prefix`` are tracked. A new prefix takes the
        L1 down at once (keys under it were not tracked until now) and restarts tracking."""
        with self._lock:
            merged = _with_prefix(self._prefixes, prefix)
            if merged is None:
                return
            self._prefixes = merged
            if self._thread is not None:
                self.store.reset(False)
                self._went_down()
                self._restart.set()

    def suspect(self) -> None:
        """Something went wrong talking to Redis elsewhere: the L1 goes down at once and
        the listener reconnects (and empties it again) before it is used again."""
        with self._lock:
            if self._thread is not None and self.store.usable:
                self.store.reset(False)
                self._went_down()
                self._restart.set()

    @property
    def prefixes(self) -> list[bytes]:
        return list(self._prefixes)

    def ensure_running(self) -> None:
        """Starts the listener thread if this process has none (first use, after a fork,
        or after it gave up on an unreachable server)."""
        self._last_wanted = time.monotonic()
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._forget_after_fork()
            if self._thread is None:
                self._restart.clear()
                self._thread = threading.Thread(
                    target=self._run, name=f"fastcache-invalidation-{id(self.store):x}",
                    daemon=True)
                self._thread.start()
                self.starts += 1

    def stats(self) -> dict[str, Any]:
        return {
            "l1_listener": self.state,
            "l1_listener_kind": self.kind,
            "l1_listener_starts": self.starts,
            "l1_listener_error": self.last_error,
            "l1_listener_connections": self.connections,
            "l1_invalidation_messages": self.messages,
            "l1_invalidated_keys": self.keys,
            "l1_flushes": self.flushes,
            "l1_listener_downs": self.downs,
            "l1_listener_ups": self.ups,
            "l1_tracked_prefixes": [p.decode("utf-8", "replace") for p in self._prefixes],
        }

    def _forget_after_fork(self) -> None:
        # The parent's thread does not exist here and its sockets are the parent's: they
        # are dropped, never shut down. The copied L1 may be stale from now on.
        self._pid = os.getpid()
        self._thread = None
        self._lock = threading.Lock()
        self._restart = threading.Event()
        self.state = "down"
        self.connections = 0
        self.starts = 0
        self.store.reset(False)

    # -- the thread

    def _run(self) -> None:
        backoff = 0.02
        me = threading.current_thread()
        while True:
            links: list[_Link] = []
            try:
                self._restart.clear()
                links = self._connect()
                self._up(links)
                backoff = 0.02
                self._serve(links)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.state == "up":
                    logger.warning("L1 invalidation listener lost Redis (%s): the L1 is "
                                   "bypassed until it reconnects", self.last_error)
            finally:
                self._down(links)
            if self._thread is not me:
                return  # forked away (cannot happen in the child) or replaced
            if time.monotonic() - self._last_wanted > IDLE_EXIT:
                with self._lock:
                    if self._thread is me:
                        self._thread = None
                return
            self._restart.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _up(self, links: list[_Link]) -> None:
        with self._lock:  # track() may have added a prefix these links do not cover
            if self._restart.is_set():
                raise ConnectionError("tracked prefixes changed while connecting")
            # Messages may have been missed while no listener was subscribed: start empty.
            self.store.reset(True)
            self.state = "up"
        self.connections = len(links)
        self.ups += 1

    def _went_down(self) -> None:
        if self.state == "up":
            self.downs += 1
        self.state = "down"

    def _down(self, links: list[_Link]) -> None:
        self._went_down()
        self.connections = 0
        self.store.reset(False)
        for link in links:
            link.close()

    def _connect(self) -> list[_Link]:
        prefixes = self.prefixes
        if not prefixes:
            prefixes = [b""]
        links = []
        try:
            for conn, name in self._new_connections():
                link = _Link(conn, name)
                links.append(link)
                conn.connect()
                conn.send_command("CLIENT", "ID")
                client_id = conn.read_response()
                args: list[Any] = ["CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST"]
                for p in prefixes:
                    if p:
                        args += ["PREFIX", p]
                conn.send_command(*args)
                reply = conn.read_response()
                if reply not in (b"OK", "OK", True):
                    raise ConnectionError(f"CLIENT TRACKING answered {reply!r}")
                conn.send_command("SUBSCRIBE", CHANNEL, check_health=False)
                reply = self._next(link, PONG_DEADLINE + self._socket_timeout())
                if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
                    raise ConnectionError(f"SUBSCRIBE answered {reply!r}")
            self._topology = self._topology_now()
            self._topology_checked = time.monotonic()
            return links
        except BaseException:
            for link in links:
                link.close()
            raise

    def _socket_timeout(self) -> float:
        return float(self.clients.config.connection_kwargs.get("socket_timeout") or 1.0)

    def _new_connections(self) -> list[tuple[Any, str]]:
        """Fresh connections (not from any pool's free list) to every primary, made with
        the pool's own connection class and arguments but RESP2 (the invalidations then
        arrive as pub/sub messages, never as pushes a RESP3 parser would consume) and a
        read timeout no longer than the PING deadline (a reply cut short by a hung server
        fails the link instead of blocking it)."""
        client = self.clients.client(write=True)
        if self.clients.is_cluster:
            pools = [(client.get_redis_connection(node).connection_pool, node.name)
                     for node in client.get_primaries()]
        else:
            pools = [(client.connection_pool, self.clients.mode)]
        made = []
        for pool, name in pools:
            kwargs = dict(pool.connection_kwargs)
            kwargs["protocol"] = 2
            timeout = kwargs.get("socket_timeout")
            kwargs["socket_timeout"] = min(timeout or PONG_DEADLINE, PONG_DEADLINE)
            made.append((pool.connection_class(**kwargs), name))
        return made

    def _topology_now(self) -> Any:
        """What the listener connections were made for: the Sentinel primary's address or
        the cluster's slot map (start, end, primary); None for a single node."""
        return None if self.clients.mode == "single" else _topology_now(self.clients)

    @staticmethod
    def _next(link: _Link, wait: float) -> Any:
        """The next reply on one link, waiting at most ``wait`` seconds for it to begin."""
        if not link.conn.can_read(timeout=wait):
            raise TimeoutError(f"no reply from {link.name}")
        return link.conn.read_response(disable_decoding=True)

    def _serve(self, links: list[_Link]) -> None:
        """Reads every link until one fails (raised here) or a restart is asked for
        (returns). redis-py exposes no socket to wait on several at once, so each link
        past the first gets a thread of its own; any failure stops them all."""
        stop = threading.Event()
        failures: list[BaseException] = []

        def pump(link: _Link) -> None:
            try:
                self._pump(link, stop, watch_topology=False)
            except BaseException as exc:
                failures.append(exc)
            finally:
                stop.set()

        helpers = [threading.Thread(target=pump, args=(link,), daemon=True,
                                    name=f"fastcache-invalidation-{link.name}")
                   for link in links[1:]]
        for helper in helpers:
            helper.start()
        try:
            self._pump(links[0], stop, watch_topology=True)
        finally:
            stop.set()
            for helper in helpers:
                helper.join()
        if failures:
            raise failures[0]

    def _pump(self, link: _Link, stop: threading.Event, watch_topology: bool) -> None:
        """One link: its messages, its PING health check, and (on one link only) the
        topology check. Waits at most 0.1 s at a time, to notice ``stop`` and a restart."""
        conn = link.conn
        next_ping = time.monotonic() + PING_INTERVAL
        while not stop.is_set() and not self._restart.is_set():
            wait = max(0.0, min(next_ping - time.monotonic(), 0.1))
            if conn.can_read(timeout=wait):
                self._drain(link)
            now = time.monotonic()
            if now < next_ping:
                continue
            if link.ping_sent is not None and now - link.ping_sent > PONG_DEADLINE:
                raise TimeoutError(f"{link.name} did not answer PING in {PONG_DEADLINE}s")
            if link.ping_sent is None:
                link.ping_sent = now
                conn.send_command("PING", check_health=False)
            next_ping = now + PING_INTERVAL
            if watch_topology and now - self._topology_checked >= TOPOLOGY_INTERVAL:
                self._topology_checked = now
                if self._topology_now() != self._topology:
                    raise ConnectionError("the Redis topology changed (failover or "
                                          "slot move)")

    def _drain(self, link: _Link) -> None:
        """Handles every reply that has arrived on ``link`` (at least one)."""
        while True:
            reply = link.conn.read_response(disable_decoding=True)
            kind = reply[0] if isinstance(reply, list) and reply else reply
            # RESP2 pub/sub: ["message", channel, keys], keys None for a flush.
            if kind == b"message":
                self.messages += 1
                keys = reply[2]
                if keys is None:  # FLUSHDB / FLUSHALL
                    self.flushes += 1
                    self.store.reset(self.store.usable)
                else:
                    self.keys += self.store.invalidate(keys)
            elif kind == b"pong":
                link.ping_sent = None
                link.pings += 1
            else:
                raise ConnectionError(f"unexpected message on {link.name}: {reply!r}")
            if not link.conn.can_read(timeout=0):
                return
