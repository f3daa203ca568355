"""Turns a cache's ``LOCATION`` and ``OPTIONS`` into redis-py clients, sync and asyncio, for
a single node (with optional read replicas), a Sentinel-managed primary or a Redis Cluster,
plus the per-node helpers the backend needs on a cluster.

The whole configuration is validated when :class:`RedisClients` is built (an
``ImproperlyConfigured`` naming the option and the bad value); clients are created on first
use. See ``docs/redis.md`` for the user-facing reference.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import re
import threading
import weakref
from collections.abc import AsyncIterator, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from ._config import improperly, option_bool, option_int, option_mapping, option_number

try:
    import redis
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "a Redis LOCATION needs redis-py: pip install 'django-fastcache[redis]'"
    ) from exc

import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.retry
import redis.sentinel
from redis.backoff import NoBackoff
from redis.crc import key_slot as _key_slot

__all__ = [
    "REDIS_OPTIONS",
    "Endpoint",
    "RedisClients",
    "RedisConfig",
    "ascan_keys",
    "group_by_node",
    "group_by_slot",
    "key_slot",
    "parse_config",
    "scan_keys",
]

K = TypeVar("K", bound=Hashable)

#: The ``OPTIONS`` keys this module reads (the backend reads the others).
REDIS_OPTIONS = frozenset({
    "CLUSTER", "SENTINELS", "SENTINEL_SERVICE", "SENTINEL_KWARGS", "MAX_CONNECTIONS",
    "SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT", "HEALTH_CHECK_INTERVAL", "RETRY_ON_TIMEOUT",
    "RETRIES", "CONNECTION_KWARGS",
})

_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
_NODE_SCHEMES = {"redis": False, "rediss": True, "unix": False}
_SPLIT = re.compile(r"[;,]")

# Keyword arguments that come from LOCATION or from a named option, never from
# CONNECTION_KWARGS: two places for one fact would be ambiguous.
_KWARGS_FROM_LOCATION = {
    "host", "port", "db", "username", "password", "path", "unix_socket_path", "ssl",
    "url", "startup_nodes", "connection_pool",
}
_KWARGS_FROM_OPTIONS = {
    "max_connections": "MAX_CONNECTIONS",
    "socket_timeout": "SOCKET_TIMEOUT",
    "socket_connect_timeout": "SOCKET_CONNECT_TIMEOUT",
    "health_check_interval": "HEALTH_CHECK_INTERVAL",
    "retry": "RETRIES",
    "retry_on_timeout": "RETRY_ON_TIMEOUT",
    "retry_on_error": "RETRY_ON_TIMEOUT",
}


@dataclass(frozen=True)
class Endpoint:
    """One server address: TCP ``host``/``port`` or a Unix socket ``path``."""

    host: str | None = None
    port: int = 6379
    path: str | None = None

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RedisConfig:
    """A validated ``LOCATION`` + ``OPTIONS``. ``mode`` is ``"single"``, ``"sentinel"`` or
    ``"cluster"``; ``nodes`` are the primary then the read replicas (single), the seed nodes
    (cluster), or empty (sentinel, where ``sentinels`` and ``service`` locate the primary)."""

    mode: str
    nodes: tuple[Endpoint, ...]
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    connection_kwargs: dict[str, Any] = field(default_factory=dict, repr=False)
    retries: int = 1
    retry_on_timeout: bool = False


# --- parsing ---------------------------------------------------------------------------

def _redact(url: str) -> str:
    """``url`` with its password replaced, for error messages."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


def _bad_location(url: str, why: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"LOCATION {_redact(url)!r}: {why}")


@dataclass
class _ParsedURL:
    scheme: str
    endpoints: list[Endpoint]
    db: int
    username: str | None
    password: str | None


def _parse_db(url: str, path: str, query: dict[str, list[str]], cluster: bool) -> int:
    candidates = []
    if path.strip("/"):
        candidates.append(path.strip("/"))
    candidates += query.get("db", [])
    dbs = set()
    for text in candidates:
        if not text.isdigit():
            raise _bad_location(url, f"the database must be a number >= 0, not {text!r}")
        dbs.add(int(text))
    if len(dbs) > 1:
        raise _bad_location(url, "the database is given twice, with different numbers")
    db = dbs.pop() if dbs else 0
    if cluster and db != 0:
        raise _bad_location(url, "Redis Cluster has database 0 only")
    return db


def _parse_hostport(url: str, text: str) -> Endpoint:
    try:
        parts = urlsplit("//" + text)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise _bad_location(url, f"bad address {text!r} ({exc})") from None
    if not host or parts.path or parts.username or parts.password:
        raise _bad_location(url, f"bad address {text!r}, expected host[:port]")
    return Endpoint(host=host, port=port or 6379)


def _parse_url(url: str, *, allow_empty_host: bool = False) -> _ParsedURL:
    """One URL (``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` with several
    comma-separated hosts)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _bad_location(url, "not a URL; expected redis://, rediss://, unix:// or "
                                 "redis+cluster://")
    if scheme == "redis+sentinel" or scheme == "rediss+sentinel":
        raise _bad_location(url, "Sentinel is configured with OPTIONS['SENTINELS'] and "
                                 "OPTIONS['SENTINEL_SERVICE'], not with a URL scheme")
    if scheme not in _NODE_SCHEMES and scheme not in _CLUSTER_SCHEMES:
        raise _bad_location(url, f"unsupported scheme {scheme + '://'!r}; expected redis://, "
                                 "rediss://, unix:// or redis+cluster://")
    cluster = scheme in _CLUSTER_SCHEMES
    # The netloc is split by hand: a cluster URL lists several host:port pairs.
    netloc, _, tail = rest.partition("/")
    path, _, query_text = ("/" + tail).partition("?")
    if "?" in netloc:
        netloc, _, query_text = netloc.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    query = parse_qs(query_text, keep_blank_values=True)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise _bad_location(url, f"query parameter(s) {', '.join(unknown)} not supported; "
                                 "set connection options in OPTIONS")
    if scheme == "unix":
        if hosts:
            raise _bad_location(url, "a unix:// URL takes no host; write unix:///path/to/sock")
        socket_path = unquote(path)
        if socket_path in ("", "/"):
            raise _bad_location(url, "no socket path")
        return _ParsedURL(scheme, [Endpoint(path=socket_path)], _parse_db(url, "", query, False),
                          username, password)
    db = _parse_db(url, path, query, cluster)
    if not hosts:
        if not allow_empty_host:
            raise _bad_location(url, "no host")
        return _ParsedURL(scheme, [], db, username, password)
    texts = hosts.split(",") if cluster else [hosts]
    return _ParsedURL(scheme, [_parse_hostport(url, t) for t in texts], db, username, password)


def _location_urls(location: Any) -> list[str]:
    if location is None or location == "":
        return []
    if isinstance(location, str):
        if location.lower().startswith(tuple(s + "://" for s in _CLUSTER_SCHEMES)):
            return [location.strip()]
        urls = [u.strip() for u in _SPLIT.split(location) if u.strip()]
    elif isinstance(location, (list, tuple)):
        urls = []
        for i, url in enumerate(location):
            if not isinstance(url, str) or not url.strip():
                raise ImproperlyConfigured(f"LOCATION[{i}] must be a Redis URL, not {url!r}")
            urls.append(url.strip())
    else:
        raise ImproperlyConfigured(
            f"LOCATION must be a Redis URL, a list of URLs or a comma-separated string of "
            f"URLs, not {location!r}")
    return urls


def _sentinel_addresses(value: Any) -> tuple[tuple[str, int], ...]:
    bad = improperly("SENTINELS", value, "a non-empty list of (host, port) pairs")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise bad
    out = []
    for item in value:
        if isinstance(item, str):  # "host:port" is accepted too, as in environment variables
            host, _, port_text = item.rpartition(":")
            port: Any = int(port_text) if port_text.isdigit() else None
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            host, port = item
        else:
            raise bad
        if (not isinstance(host, str) or not host or not isinstance(port, int)
                or isinstance(port, bool) or not 0 < port < 65536):
            raise improperly("SENTINELS", value, f"a list of (host, port) pairs ({item!r} is not)")
        out.append((host, port))
    return tuple(out)


@cache
def _accepted_kwargs(mode: str) -> frozenset[str]:
    """Keyword arguments that both the sync and the asyncio client classes of ``mode`` take."""
    def params(fn: Any) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD} - {"self"}

    if mode == "cluster":
        sync = params(redis.cluster.RedisCluster.__init__) | (
            set(redis.cluster.REDIS_ALLOWED_KEYS) - set(redis.cluster.KWARGS_DISABLED_KEYS))
        both = sync & params(redis.asyncio.cluster.RedisCluster.__init__)
    else:
        both = params(redis.Redis.__init__) & params(redis.asyncio.Redis.__init__)
    return frozenset(both)


def _connection_kwargs(options: Mapping[str, Any], mode: str, tls: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": option_number(options, "SOCKET_TIMEOUT", 1.0, allow_none=True),
        "socket_connect_timeout": option_number(
            options, "SOCKET_CONNECT_TIMEOUT", 1.0, allow_none=True),
        "health_check_interval": option_number(
            options, "HEALTH_CHECK_INTERVAL", 0, positive=False),
    }
    max_connections = option_int(options, "MAX_CONNECTIONS", None, minimum=1, allow_none=True)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    extra = option_mapping(options, "CONNECTION_KWARGS")
    accepted = _accepted_kwargs(mode)
    for key, value in extra.items():
        where = f"OPTIONS['CONNECTION_KWARGS'][{key!r}]"
        if key in _KWARGS_FROM_LOCATION:
            raise ImproperlyConfigured(f"{where}: {key} comes from LOCATION; set it there")
        if key in _KWARGS_FROM_OPTIONS:
            raise ImproperlyConfigured(
                f"{where}: use OPTIONS[{_KWARGS_FROM_OPTIONS[key]!r}] instead")
        if key == "decode_responses" and value:
            raise ImproperlyConfigured(f"{where}: the cache stores bytes; responses must "
                                       "not be decoded")
        if key.startswith("ssl_") and not tls:
            raise ImproperlyConfigured(f"{where}: TLS options need a rediss:// LOCATION")
        if key not in accepted:
            kind = "redis.cluster.RedisCluster" if mode == "cluster" else "redis.Redis"
            raise ImproperlyConfigured(
                f"{where}: not a keyword argument of {kind} and its asyncio twin")
        kwargs[key] = value
    return kwargs


def parse_config(location: Any, options: Mapping[str, Any] | None = None) -> RedisConfig:
    """Validate ``LOCATION`` and ``OPTIONS``; ``ImproperlyConfigured`` naming what is wrong."""
    options = options if options is not None else {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"OPTIONS must be a dict, not {options!r}")
    urls = _location_urls(location)
    cluster_flag = options.get("CLUSTER", None)
    if cluster_flag is not None and not isinstance(cluster_flag, bool):
        raise improperly("CLUSTER", cluster_flag, "True or False")
    sentinels_value = options.get("SENTINELS")
    sentinel = sentinels_value is not None
    cluster_urls = [u for u in urls if u.lower().partition("://")[0] in _CLUSTER_SCHEMES]
    if cluster_urls and len(urls) > 1:
        raise ImproperlyConfigured(
            f"LOCATION {[_redact(u) for u in urls]!r} mixes a redis+cluster:// URL with other "
            "URLs; list every seed node in the one redis+cluster:// URL")
    if cluster_urls and cluster_flag is False:
        raise ImproperlyConfigured(
            f"OPTIONS['CLUSTER'] is False but LOCATION {_redact(urls[0])!r} is a "
            "redis+cluster:// URL")
    cluster = bool(cluster_flag or cluster_urls)
    if cluster and sentinel:
        raise ImproperlyConfigured(
            "OPTIONS['SENTINELS'] and a Redis Cluster (OPTIONS['CLUSTER'] or a redis+cluster:// "
            "LOCATION) exclude each other")
    for name in ("SENTINEL_SERVICE", "SENTINEL_KWARGS"):
        if not sentinel and options.get(name) is not None:
            raise ImproperlyConfigured(f"OPTIONS[{name!r}] is set but OPTIONS['SENTINELS'] is not")

    parsed = [_parse_url(u, allow_empty_host=sentinel) for u in urls]
    retries = option_int(options, "RETRIES", 1, minimum=0)
    retry_on_timeout = option_bool(options, "RETRY_ON_TIMEOUT", False)

    if sentinel:
        mode = "sentinel"
        sentinels = _sentinel_addresses(sentinels_value)
        service = options.get("SENTINEL_SERVICE")
        if not isinstance(service, str) or not service:
            raise improperly("SENTINEL_SERVICE", service,
                             "the name of the service the sentinels monitor")
        if len(parsed) > 1:
            raise ImproperlyConfigured(
                "with OPTIONS['SENTINELS'], LOCATION is one URL that carries the database and "
                f"credentials (redis://[user:password@]{service}/db), not a list")
        p = parsed[0] if parsed else _ParsedURL("redis", [], 0, None, None)
        if p.scheme == "unix":
            raise _bad_location(urls[0], "the sentinels hand out TCP addresses; use redis:// "
                                         "or rediss://")
        if p.endpoints and (p.endpoints[0].host != service.lower()
                            or urlsplit(urls[0]).port is not None):
            raise _bad_location(
                urls[0], f"with OPTIONS['SENTINELS'] the host part of LOCATION must be "
                         f"empty or the service name {service!r}, without a port")
        tls = _NODE_SCHEMES[p.scheme]
        sentinel_kwargs = {
            "socket_timeout": option_number(options, "SOCKET_TIMEOUT", 1.0, allow_none=True),
            "socket_connect_timeout": option_number(
                options, "SOCKET_CONNECT_TIMEOUT", 1.0, allow_none=True),
            **option_mapping(options, "SENTINEL_KWARGS"),
        }
        return RedisConfig(
            mode, (), tls, p.db, p.username, p.password, sentinels, service, sentinel_kwargs,
            _connection_kwargs(options, "single", tls), retries, retry_on_timeout)

    if not parsed:
        raise ImproperlyConfigured(
            f"LOCATION must name a Redis server (redis://host:port/db), not {location!r}")

    first = parsed[0]
    if cluster:
        mode = "cluster"
        schemes = {p.scheme.replace("+cluster", "") for p in parsed}
        for url, p in zip(urls, parsed, strict=True):
            if p.scheme == "unix":
                raise _bad_location(url, "Redis Cluster nodes are reached over TCP; unix:// "
                                         "is not supported")
        if len(schemes) > 1:
            raise ImproperlyConfigured(
                f"LOCATION {[_redact(u) for u in urls]!r} mixes redis:// and rediss:// seeds")
        for url, p in zip(urls, parsed, strict=True):
            if p.db != 0:
                raise _bad_location(url, "Redis Cluster has database 0 only")
        nodes = tuple(ep for p in parsed for ep in p.endpoints)
        tls = schemes.pop() == "rediss"
    else:
        mode = "single"
        nodes = tuple(p.endpoints[0] for p in parsed)
        tls = first.scheme == "rediss"
        if any((p.scheme == "rediss") != tls for p in parsed):
            raise ImproperlyConfigured(
                f"LOCATION {[_redact(u) for u in urls]!r} mixes TLS and plain URLs; the "
                "primary and its replicas are reached the same way")
    creds = {(p.db, p.username, p.password) for p in parsed}
    if len(creds) > 1:
        raise ImproperlyConfigured(
            f"LOCATION {[_redact(u) for u in urls]!r}: every URL must carry the same database "
            "and credentials")
    return RedisConfig(
        mode, nodes, tls, first.db, first.username, first.password,
        connection_kwargs=_connection_kwargs(options, mode, tls), retries=retries,
        retry_on_timeout=retry_on_timeout)


# --- clients -------------------------------------------------------------------------------

class _ClientSet:
    """The clients of one process (sync) or one event loop (asyncio)."""

    __slots__ = ("primary", "replicas", "helpers", "closer")

    def __init__(self, primary: Any, replicas: list[Any], helpers: Sequence[Any] = ()) -> None:
        self.primary = primary
        self.replicas = replicas
        self.helpers = list(helpers)  # clients to the sentinels, closed with the others
        self.closer: asyncio.Task | None = None

    def all(self) -> list[Any]:
        return [self.primary, *self.replicas, *self.helpers]


class RedisClients:
    """The redis-py clients of one cache: built lazily, rebuilt in a forked child.

    ``client(write)`` returns the sync client: on a single node with replicas, writes go to
    the primary and reads to a replica picked at random per call (replication is
    asynchronous, so a read right after a write may not see it); with Sentinel, the client
    follows the primary the sentinels name; on a cluster, a ``redis.cluster.RedisCluster``.
    ``async_client(write)`` is the same for ``redis.asyncio``, one client set per event loop
    (asyncio connections are bound to the loop that opened them); a loop's clients are
    closed when that loop shuts down its tasks (``asyncio.run`` does) or on :meth:`aclose`.

    Thread-safe. The configuration is validated in the constructor; no connection is made
    before the first call. After ``os.fork()`` the child builds new clients on first use and
    leaves the parent's sockets alone (redis-py pools also reset themselves on a pid change;
    rebuilding here covers the cluster topology lock and the per-loop clients too).
    """

    def __init__(self, location: Any, options: Mapping[str, Any] | None = None) -> None:
        self.config = parse_config(location, options)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._sync: _ClientSet | None = None
        self._async: dict[asyncio.AbstractEventLoop, _ClientSet] = {}
        _all_clients.add(self)

    @property
    def mode(self) -> str:
        """``"single"``, ``"sentinel"`` or ``"cluster"``."""
        return self.config.mode

    @property
    def is_cluster(self) -> bool:
        return self.config.mode == "cluster"

    # -- sync

    def client(self, write: bool = True) -> Any:
        """The sync client for a write (primary) or a read (a random replica if any).

        On a cluster, the first call discovers the topology; if no node answers, that call
        raises ``redis.exceptions.ConnectionError`` (the policy treats it like any outage).
        """
        clients = self._sync
        if clients is None or self._pid != os.getpid():
            clients = self._build_sync()
        if write or not clients.replicas:
            return clients.primary
        return random.choice(clients.replicas)

    def _build_sync(self) -> _ClientSet:
        with self._fork_safe_lock():
            self._check_fork()
            if self._sync is None:
                self._sync = self._make(asyncio_=False)
            return self._sync

    def _fork_safe_lock(self) -> threading.Lock:
        """The lock, replaced first in a forked child: a thread of the parent may have held
        it at the fork, and that thread does not exist here to release it."""
        if self._pid != os.getpid():
            self._lock = threading.Lock()
        return self._lock

    def _check_fork(self) -> None:
        """Under ``self._lock``: a fork that bypassed ``os.register_at_fork`` hooks (none
        does in CPython; kept as a guard) is handled like one that ran them."""
        if self._pid != os.getpid():
            self._forget_parent(new_lock=False)

    def _forget_parent(self, new_lock: bool) -> None:
        # The parent's clients are dropped without closing: their sockets are the parent's
        # too (redis-py only closes them, never shuts them down, when the pid differs). They
        # are kept referenced, so that no finalizer of theirs runs in the child while a
        # thread of the child uses the clients built to replace them.
        self._orphans = [self._sync, self._async]
        self._pid = os.getpid()
        self._sync = None
        self._async = {}
        if new_lock:
            self._lock = threading.Lock()

    # -- asyncio

    def async_client(self, write: bool = True) -> Any:
        """The ``redis.asyncio`` client of the running event loop (see :meth:`client`).

        On a cluster the client discovers the topology on its first command.
        """
        loop = asyncio.get_running_loop()
        clients = self._async.get(loop)
        if clients is None or self._pid != os.getpid():
            clients = self._build_async(loop)
        if write or not clients.replicas:
            return clients.primary
        return random.choice(clients.replicas)

    def _build_async(self, loop: asyncio.AbstractEventLoop) -> _ClientSet:
        with self._fork_safe_lock():
            self._check_fork()
            clients = self._async.get(loop)
            if clients is not None:
                return clients
            # Loops closed without shutting down their tasks leave their clients here;
            # nothing can be awaited on them any more, so they are only dropped.
            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]
            clients = self._make(asyncio_=True)
            clients.closer = loop.create_task(self._close_on_shutdown(loop, clients))
            self._async[loop] = clients
            return clients

    async def _close_on_shutdown(self, loop: asyncio.AbstractEventLoop,
                                 clients: _ClientSet) -> None:
        """Waits until cancelled (``asyncio.run`` cancels leftover tasks before closing the
        loop), then closes the loop's clients while the loop can still run their I/O."""
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            with self._lock:
                if self._async.get(loop) is clients:
                    del self._async[loop]
            await _aclose_all(clients)
            raise

    async def aclose(self) -> None:
        """Close the running loop's clients (new ones are built on the next call)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._async.pop(loop, None)
        if clients is not None:
            if clients.closer is not None:
                clients.closer.cancel()
            await _aclose_all(clients)

    def close(self) -> None:
        """Disconnect the sync clients; the next call builds new ones.

        Asyncio clients can only be closed on their own loop: use :meth:`aclose` there (or
        let the loop shut down). Clients of loops already closed are dropped here.
        """
        with self._lock:
            clients, self._sync = self._sync, None
            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]
        if clients is not None and self._pid == os.getpid():
            for client in clients.all():
                client.close()

    # -- construction

    def _retry(self, asyncio_: bool) -> Any:
        c = self.config
        if asyncio_:
            errors: tuple = (redis.exceptions.ConnectionError,)
            if c.retry_on_timeout:
                errors += (redis.exceptions.TimeoutError,)
            return redis.asyncio.retry.Retry(NoBackoff(), c.retries, supported_errors=errors)
        errors = (redis.exceptions.ConnectionError,)
        if c.retry_on_timeout:
            errors += (redis.exceptions.TimeoutError, TimeoutError)
        return redis.retry.Retry(NoBackoff(), c.retries, supported_errors=errors)

    def _make(self, asyncio_: bool) -> _ClientSet:
        c = self.config
        auth = {"username": c.username, "password": c.password}
        retry = self._retry(asyncio_)
        if c.mode == "cluster":
            return _ClientSet(self._make_cluster(asyncio_, auth, retry), [])
        if c.mode == "sentinel":
            cls = redis.asyncio.sentinel.Sentinel if asyncio_ else redis.sentinel.Sentinel
            redis_cls = redis.asyncio.Redis if asyncio_ else redis.Redis
            # The sentinels' clients get the same short retry policy as the data nodes'
            # (redis-py's default backs off for seconds), unless SENTINEL_KWARGS says otherwise.
            sentinel_kwargs = {"retry": self._retry(asyncio_), **c.sentinel_kwargs}
            manager = cls(list(c.sentinels), sentinel_kwargs=sentinel_kwargs,
                          **c.connection_kwargs)
            primary = manager.master_for(c.service, redis_class=redis_cls, db=c.db, ssl=c.tls,
                                         retry=retry, **auth)
            return _ClientSet(primary, [], manager.sentinels)
        cls = redis.asyncio.Redis if asyncio_ else redis.Redis
        made = []
        for ep in c.nodes:
            where = ({"unix_socket_path": ep.path} if ep.path
                     else {"host": ep.host, "port": ep.port, "ssl": c.tls})
            made.append(cls(**where, db=c.db, retry=retry, **auth, **c.connection_kwargs))
        return _ClientSet(made[0], made[1:])

    def _make_cluster(self, asyncio_: bool, auth: dict[str, Any], retry: Any) -> Any:
        c = self.config
        if asyncio_:
            nodes = [redis.asyncio.cluster.ClusterNode(ep.host, ep.port) for ep in c.nodes]
            return redis.asyncio.cluster.RedisCluster(
                startup_nodes=nodes, ssl=c.tls, retry=retry, **auth, **c.connection_kwargs)
        nodes = [redis.cluster.ClusterNode(ep.host, ep.port) for ep in c.nodes]
        try:
            return redis.cluster.RedisCluster(
                startup_nodes=nodes, ssl=c.tls, retry=retry, **auth, **c.connection_kwargs)
        except redis.exceptions.RedisClusterException as exc:
            # The sync client discovers the topology in its constructor; no reachable seed
            # is an outage like any other, not a programming error.
            raise redis.exceptions.ConnectionError(
                f"no Redis Cluster seed node answered ({exc})") from exc

    def __repr__(self) -> str:
        c = self.config
        where = f"service {c.service!r}" if c.mode == "sentinel" else ", ".join(map(str, c.nodes))
        return f"<RedisClients {c.mode} {where} db={c.db}>"


_all_clients: weakref.WeakSet[RedisClients] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Runs in the child before any other thread exists: each RedisClients starts over at
    # once (fresh lock, no clients), so the child's threads build one client set, once,
    # and a lock held by a parent thread at the fork is never inherited.
    for clients in list(_all_clients):
        clients._forget_parent(new_lock=True)


os.register_at_fork(after_in_child=_after_fork_in_child)


async def _aclose_all(clients: _ClientSet) -> None:
    for client in clients.all():
        try:
            await client.aclose()
        except Exception:  # closing a client whose server is gone must not mask anything
            pass


# --- cluster helpers -------------------------------------------------------------------------

def key_slot(key: str | bytes) -> int:
    """The cluster hash slot of ``key`` (str keys are UTF-8 encoded, as redis-py does)."""
    return _key_slot(key.encode() if isinstance(key, str) else key)


def group_by_slot(keys: Iterable[K]) -> dict[int, list[K]]:
    """Keys grouped by hash slot, each group in input order.

    A multi-key command (MGET, MSET, DEL) must stay within one slot on a cluster; issuing
    one command per group in one cluster pipeline (``client.pipeline()``) sends each node
    its groups in a single round trip and lets redis-py follow MOVED/ASK redirections.
    """
    groups: dict[int, list[K]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)  # type: ignore[arg-type]
    return groups


def group_by_node(client: Any, keys: Iterable[K]) -> dict[str, list[K]]:
    """Keys grouped by the name (``host:port``) of the primary that holds their slot, per
    the client's current slot map (an asyncio cluster client must have been initialized)."""
    groups: dict[str, list[K]] = {}
    for key in keys:
        node = client.get_node_from_key(key)
        groups.setdefault(node.name, []).append(key)
    return groups


def scan_keys(client: Any, match: str | bytes | None = None,
              count: int | None = None) -> Iterator[bytes]:
    """Every key matching ``match``, with SCAN: on each primary of a cluster in turn, or on
    the one server of a plain (or Sentinel) client. Keys written during the scan may or may
    not be returned, as with SCAN itself."""
    if isinstance(client, redis.cluster.RedisCluster):
        for node in client.get_primaries():
            yield from client.get_redis_connection(node).scan_iter(match=match, count=count)
    else:
        yield from client.scan_iter(match=match, count=count)


async def ascan_keys(client: Any, match: str | bytes | None = None,
                     count: int | None = None) -> AsyncIterator[bytes]:
    """:func:`scan_keys` for ``redis.asyncio`` clients."""
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        await client.initialize()
        for node in client.get_primaries():
            cursor = 0
            while True:
                reply = await client.scan(cursor, match=match, count=count, target_nodes=node)
                cursors, keys = reply
                for key in keys:
                    yield key
                cursor = cursors[node.name]
                if cursor == 0:
                    break
    else:
        async for key in client.scan_iter(match=match, count=count):
            yield key
