"""LOCATION/OPTIONS forms turned into redis-py clients, each checked against a real server:
a single node (TCP, Unix socket, TLS, ACL), a primary with replicas, a sentinel set (with a
failover) and a three-master cluster; the cluster helpers; bad settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import warnings

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django_fastcache.redis_client import (
    Endpoint,
    RedisClients,
    ascan_keys,
    group_by_node,
    group_by_slot,
    key_slot,
    parse_config,
    scan_keys,
)
from redis_servers import RedisSentinelSet, RedisServer, free_port, require_binary, wait_until

pytestmark = pytest.mark.redis


# --- parsing, no server ----------------------------------------------------------------------

@pytest.mark.parametrize(("location", "options", "expected"), [
    ("redis://127.0.0.1:6380/2", {},
     dict(mode="single", nodes=(Endpoint("127.0.0.1", 6380),), db=2, tls=False)),
    ("redis://h", {}, dict(nodes=(Endpoint("h", 6379),), db=0)),
    ("redis://h?db=4", {}, dict(db=4)),
    ("rediss://alice:s%40cret@h:7000/1", {},
     dict(tls=True, username="alice", password="s@cret", db=1)),
    ("redis://:pw@h", {}, dict(username=None, password="pw")),
    ("unix:///run/redis.sock?db=3", {}, dict(nodes=(Endpoint(path="/run/redis.sock"),), db=3)),
    ("unix://:pw@/run/redis.sock", {}, dict(password="pw")),
    ("redis://a:1/0,redis://b:2/0;redis://c:3/0", {},
     dict(nodes=(Endpoint("a", 1), Endpoint("b", 2), Endpoint("c", 3)))),
    (["redis://a:1", "redis://b:2"], {}, dict(nodes=(Endpoint("a", 1), Endpoint("b", 2)))),
    ("redis+cluster://u:p@a:1,b:2", {},
     dict(mode="cluster", nodes=(Endpoint("a", 1), Endpoint("b", 2)), username="u")),
    ("rediss+cluster://a:1/0", {}, dict(mode="cluster", tls=True)),
    ("redis://a:1,redis://b:2", {"CLUSTER": True},
     dict(mode="cluster", nodes=(Endpoint("a", 1), Endpoint("b", 2)))),
    ("redis://[::1]:7000", {}, dict(nodes=(Endpoint("::1", 7000),))),
    (None, {"SENTINELS": [("s1", 26379), "s2:26380"], "SENTINEL_SERVICE": "mymaster"},
     dict(mode="sentinel", sentinels=(("s1", 26379), ("s2", 26380)), service="mymaster")),
    ("rediss://:pw@mymaster/5", {"SENTINELS": [("s", 1)], "SENTINEL_SERVICE": "mymaster"},
     dict(mode="sentinel", db=5, password="pw", tls=True)),
    ("redis:///2", {"SENTINELS": [("s", 1)], "SENTINEL_SERVICE": "mymaster"}, dict(db=2)),
])
def test_parse_config_accepts(location, options, expected):
    config = parse_config(location, options)
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_parse_config_maps_options_to_client_kwargs():
    config = parse_config("rediss://h", {
        "MAX_CONNECTIONS": 20, "SOCKET_TIMEOUT": 0.25, "SOCKET_CONNECT_TIMEOUT": None,
        "HEALTH_CHECK_INTERVAL": 15, "RETRY_ON_TIMEOUT": True, "RETRIES": 3,
        "CONNECTION_KWARGS": {"client_name": "web", "ssl_cert_reqs": "none"},
    })
    assert config.connection_kwargs == {
        "max_connections": 20, "socket_timeout": 0.25, "socket_connect_timeout": None,
        "health_check_interval": 15.0, "client_name": "web", "ssl_cert_reqs": "none",
    }
    assert (config.retries, config.retry_on_timeout) == (3, True)
    defaults = parse_config("redis://h").connection_kwargs
    assert defaults == {"socket_timeout": 1.0, "socket_connect_timeout": 1.0,
                        "health_check_interval": 0.0}


S = {"SENTINELS": [("s", 26379)], "SENTINEL_SERVICE": "mymaster"}


@pytest.mark.parametrize(("location", "options", "named", "shown"), [
    ("http://h:1", {}, "LOCATION", "http://"),
    ("h:6379", {}, "LOCATION", "h:6379"),
    ("redis+sentinel://a:1,b:2/mymaster", {}, "LOCATION", "SENTINELS"),
    ("redis://h:notaport", {}, "LOCATION", "notaport"),
    ("redis://h/x", {}, "LOCATION", "'x'"),
    ("redis://h/1?db=2", {}, "LOCATION", "given twice"),
    ("redis://h?socket_timeout=1", {}, "LOCATION", "socket_timeout"),
    ("unix://host/sock", {}, "LOCATION", "no host"),
    ("redis:///0", {}, "LOCATION", "no host"),
    (42, {}, "LOCATION", "42"),
    (["redis://a", 7], {}, "LOCATION[1]", "7"),
    ("", {}, "LOCATION", "''"),
    ("redis://a,rediss://b", {}, "LOCATION", "TLS"),
    ("redis://a/1,redis://b/2", {}, "LOCATION", "same database"),
    ("redis+cluster://a:1/3", {}, "LOCATION", "database 0"),
    ("redis://a/3", {"CLUSTER": True}, "LOCATION", "database 0"),
    ("unix:///s", {"CLUSTER": True}, "LOCATION", "unix://"),
    ("redis+cluster://a:1", {"CLUSTER": False}, "CLUSTER", "redis+cluster"),
    (["redis+cluster://a:1", "redis://b"], {}, "LOCATION", "mixes"),
    ("redis+cluster://a:1", S, "SENTINELS", "exclude"),
    ("redis://a", {"CLUSTER": True, **S}, "SENTINELS", "exclude"),
    ("redis://a", {"CLUSTER": "yes"}, "CLUSTER", "'yes'"),
    (None, {"SENTINELS": [], "SENTINEL_SERVICE": "m"}, "SENTINELS", "[]"),
    (None, {"SENTINELS": [("s", "26379")], "SENTINEL_SERVICE": "m"}, "SENTINELS", "'26379'"),
    (None, {"SENTINELS": "s:1", "SENTINEL_SERVICE": "m"}, "SENTINELS", "'s:1'"),
    (None, {"SENTINELS": [("s", 1)]}, "SENTINEL_SERVICE", "None"),
    ("redis://other/0", S, "LOCATION", "service name"),
    ("redis://mymaster:6379/0", S, "LOCATION", "without a port"),
    (["redis://mymaster", "redis://mymaster"], S, "LOCATION", "not a list"),
    ("redis://a", {"SENTINEL_SERVICE": "m"}, "SENTINEL_SERVICE", "SENTINELS"),
    ("redis://a", {"SENTINEL_KWARGS": {}}, "SENTINEL_KWARGS", "SENTINELS"),
    ("redis://a", {"SOCKET_TIMEOUT": "1"}, "SOCKET_TIMEOUT", "'1'"),
    ("redis://a", {"SOCKET_TIMEOUT": 0}, "SOCKET_TIMEOUT", "0"),
    ("redis://a", {"SOCKET_CONNECT_TIMEOUT": float("nan")}, "SOCKET_CONNECT_TIMEOUT", "nan"),
    ("redis://a", {"HEALTH_CHECK_INTERVAL": -1}, "HEALTH_CHECK_INTERVAL", "-1"),
    ("redis://a", {"MAX_CONNECTIONS": 0}, "MAX_CONNECTIONS", "0"),
    ("redis://a", {"MAX_CONNECTIONS": True}, "MAX_CONNECTIONS", "True"),
    ("redis://a", {"RETRY_ON_TIMEOUT": 1}, "RETRY_ON_TIMEOUT", "1"),
    ("redis://a", {"RETRIES": -1}, "RETRIES", "-1"),
    ("redis://a", {"CONNECTION_KWARGS": ["x"]}, "CONNECTION_KWARGS", "['x']"),
    ("redis://a", {"CONNECTION_KWARGS": {"nosuch": 1}}, "CONNECTION_KWARGS", "nosuch"),
    ("redis://a", {"CONNECTION_KWARGS": {"db": 1}}, "CONNECTION_KWARGS", "LOCATION"),
    ("redis://a", {"CONNECTION_KWARGS": {"socket_timeout": 1}}, "SOCKET_TIMEOUT", "instead"),
    ("redis://a", {"CONNECTION_KWARGS": {"ssl_ca_certs": "/ca"}}, "ssl_ca_certs", "rediss://"),
    ("redis://a", {"CONNECTION_KWARGS": {"decode_responses": True}}, "decode_responses",
     "bytes"),
    ("redis://a", "not a dict", "OPTIONS", "not a dict"),
])
def test_bad_settings_raise_improperly_configured_naming_the_option(
        location, options, named, shown):
    with pytest.raises(ImproperlyConfigured) as info:
        RedisClients(location, options)
    message = str(info.value)
    assert named in message and shown in message, message


def test_error_messages_do_not_show_passwords():
    with pytest.raises(ImproperlyConfigured) as info:
        parse_config("redis://alice:topsecret@h/x")
    assert "topsecret" not in str(info.value) and "alice:***@h" in str(info.value)


# --- a single node ------------------------------------------------------------------------------

def test_single_node_set_lands_in_the_configured_db(clean_redis_server):
    clients = RedisClients(clean_redis_server.url + "/3")
    assert clients.mode == "single" and not clients.is_cluster
    clients.client().set("k", b"v")
    direct = clean_redis_server.client(db=3)
    assert direct.get("k") == b"v" and clean_redis_server.client(db=0).get("k") is None
    assert clients.client(write=False) is clients.client()  # no replicas: reads go there too
    clients.close()


def test_hiredis_parser_and_options_reach_the_connections(clean_redis_server):
    import hiredis  # noqa: F401  (a test dependency: its absence is a failure, not a skip)
    clients = RedisClients(clean_redis_server.url, {
        "SOCKET_TIMEOUT": 0.5, "MAX_CONNECTIONS": 7, "HEALTH_CHECK_INTERVAL": 30,
        "CONNECTION_KWARGS": {"client_name": "fastcache-test"},
    })
    client = clients.client()
    assert client.client_getname() == "fastcache-test"  # the server saw the kwarg
    pool = client.connection_pool
    assert pool.max_connections == 7
    connection = pool.get_connection()
    try:
        assert type(connection._parser).__name__ == "_HiredisParser"
        assert connection.socket_timeout == 0.5 and connection.health_check_interval == 30
        retry = connection.retry  # get_retries() is redis-py >= 6; _retries before
        assert (retry.get_retries() if hasattr(retry, "get_retries") else retry._retries) == 1
    finally:
        pool.release(connection)
    clients.close()


def test_unix_socket_with_db(clean_redis_server):
    clients = RedisClients(f"unix://{clean_redis_server.unix_path}?db=2")
    clients.client().set("over-unix", b"1")
    assert clean_redis_server.client(db=2).get("over-unix") == b"1"

    async def main():
        await clients.async_client().set("async-unix", b"2")

    asyncio.run(main())
    assert clean_redis_server.client(db=2).get("async-unix") == b"2"
    clients.close()


@pytest.fixture(scope="module")
def acl_server():
    # The default user needs a password; alice is a second ACL user.
    with RedisServer("--user", "alice", "on", ">wonder land", "~*", "+@all",
                     password="defaultpw") as server:
        yield server


def test_password_and_acl_username(acl_server):
    port = acl_server.port
    for url in [f"redis://:defaultpw@127.0.0.1:{port}/1",
                f"redis://alice:wonder%20land@127.0.0.1:{port}/1"]:
        clients = RedisClients(url)
        clients.client().set("who", url.split("@")[0])
        assert acl_server.client(db=1).get("who") == url.split("@")[0].encode()
        clients.close()
    for url in [f"redis://127.0.0.1:{port}", f"redis://alice:wrong@127.0.0.1:{port}"]:
        clients = RedisClients(url)
        with pytest.raises(redis.exceptions.AuthenticationError):
            clients.client().ping()
        clients.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    openssl = require_binary("openssl")
    d = tmp_path_factory.mktemp("tls")

    def run(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=30)

    # The extensions Python 3.13's strict verification (VERIFY_X509_STRICT) requires: a
    # critical CA basic constraint and key identifiers that chain the leaf to the CA.
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=fastcache-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    tls_port = free_port()
    with RedisServer("--tls-port", str(tls_port), "--tls-cert-file", str(d / "server.crt"),
                     "--tls-key-file", str(d / "server.key"),
                     "--tls-ca-cert-file", str(d / "ca.crt"),
                     "--tls-auth-clients", "no") as server:
        server.tls_port = tls_port
        server.ca = str(d / "ca.crt")
        yield server


def test_rediss_with_ssl_options_passed_through(tls_server):
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/4"
    clients = RedisClients(url, {"CONNECTION_KWARGS": {
        "ssl_ca_certs": tls_server.ca, "ssl_cert_reqs": "required"}})
    clients.client().set("secure", b"yes")
    assert tls_server.client(db=4).get("secure") == b"yes"

    async def main():
        assert await clients.async_client().get("secure") == b"yes"

    asyncio.run(main())
    clients.close()
    # Without the CA the server's certificate does not verify: TLS is really in use.
    untrusted = RedisClients(url)
    with pytest.raises(redis.exceptions.ConnectionError, match="(?i)certificate"):
        untrusted.client().ping()
    untrusted.close()


# --- a primary and read replicas ------------------------------------------------------------

@pytest.fixture(scope="module")
def replicated():
    with RedisServer() as primary:
        replicas = [RedisServer("--replicaof", "127.0.0.1", str(primary.port)) for _ in range(2)]
        try:
            for r in replicas:
                r.start()
            for r in replicas:
                wait_until(lambda r=r: r.client().info("replication")["master_link_status"] == "up",
                           10, "replica sync")
            yield primary, replicas
        finally:
            for r in replicas:
                r.close()


@pytest.mark.parametrize("form", ["list", "string"])
def test_writes_go_to_the_primary_and_reads_to_a_random_replica(replicated, form):
    primary, replicas = replicated
    urls = [primary.url + "/0"] + [r.url + "/0" for r in replicas]
    clients = RedisClients(urls if form == "list" else ",".join(urls))
    clients.client(write=True).set("rw", b"1")
    assert primary.client().get("rw") == b"1"
    # Replication is asynchronous: the replica sees the write shortly after.
    wait_until(lambda: all(r.client().get("rw") == b"1" for r in replicas), 5, "replication")
    ports = set()
    for _ in range(60):
        client = clients.client(write=False)
        assert client.get("rw") == b"1"
        ports.add(client.connection_pool.connection_kwargs["port"])
    assert ports == {r.port for r in replicas}
    with pytest.raises(redis.exceptions.ReadOnlyError):  # really a replica
        clients.client(write=False).set("rw", b"2")

    async def main():
        await clients.async_client(write=True).set("arw", b"1")
        reader = clients.async_client(write=False)
        assert reader.connection_pool.connection_kwargs["port"] in {r.port for r in replicas}

    asyncio.run(main())
    assert primary.client().get("arw") == b"1"
    clients.close()


# --- asyncio clients and fork ---------------------------------------------------------------

def test_async_clients_are_per_event_loop_and_closed_with_their_loop(clean_redis_server):
    clients = RedisClients(clean_redis_server.url)
    seen = []

    async def use():
        client = clients.async_client()
        assert clients.async_client() is client  # same loop, same client
        await client.set("loop", b"x")
        seen.append(client)
        return await client.client_id()

    ids = [asyncio.run(use()), asyncio.run(use())]
    assert seen[0] is not seen[1] and ids[0] != ids[1]
    assert clients._async == {}  # each loop's clients were closed when it shut down
    open_ids = {c["id"] for c in clean_redis_server.client().client_list()}
    assert not open_ids & set(ids)

    async def explicit_close():
        client = clients.async_client()
        await client.ping()
        await clients.aclose()
        assert clients.async_client() is not client

    asyncio.run(explicit_close())
    clients.close()


def test_async_clients_under_async_to_sync_are_closed_each_time(clean_redis_server):
    from asgiref.sync import async_to_sync

    clients = RedisClients(clean_redis_server.url)

    async def use(value):
        await clients.async_client().set("a2s", value)
        return await clients.async_client().get("a2s")

    assert [async_to_sync(use)(str(i).encode()) for i in range(3)] == [b"0", b"1", b"2"]
    assert clients._async == {}
    clients.close()


def test_async_client_outside_a_loop_is_an_error(clean_redis_server):
    with pytest.raises(RuntimeError):
        RedisClients(clean_redis_server.url).async_client()


def test_forked_child_gets_new_clients_and_leaves_the_parents_connection_alone(
        clean_redis_server):
    clients = RedisClients(clean_redis_server.url)
    parent_client = clients.client()
    parent_client.set("k", b"parent")
    parent_id = parent_client.client_id()
    with warnings.catch_warnings():  # Python 3.12 warns about fork() with threads around
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            child_client = clients.client()
            ok = child_client is not parent_client and child_client.get("k") == b"parent"
            child_client.set("child", b"1")
            # redis-py's own pid check: the parent's client object also works here, with
            # a new connection of its own.
            ok = ok and parent_client.client_id() != parent_id
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert clean_redis_server.client().get("child") == b"1"
    assert parent_client.client_id() == parent_id  # still the same, intact connection
    assert clients.client() is parent_client
    clients.close()


# --- sentinel -----------------------------------------------------------------------------------

def test_sentinel_client_follows_the_primary(clean_redis_sentinel):
    s = clean_redis_sentinel
    clients = RedisClients("redis://mymaster/2", s.options())
    assert clients.mode == "sentinel"
    clients.client().set("via-sentinel", b"1")
    assert s.primary.client(db=2).get("via-sentinel") == b"1"

    async def main():
        client = clients.async_client()
        await client.set("async-sentinel", b"2")
        assert await client.get("via-sentinel") == b"1"

    asyncio.run(main())
    assert s.primary.client(db=2).get("async-sentinel") == b"2"
    clients.close()


def test_sentinel_failover_with_passwords(tmp_path):
    with RedisSentinelSet(password="datapw", sentinel_password="sentinelpw") as s:
        options = s.options()
        without_kwargs = RedisClients("redis://:datapw@/0", {
            k: v for k, v in options.items() if k != "SENTINEL_KWARGS"})
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            without_kwargs.client().ping()  # the sentinels refuse unauthenticated clients
        assert time.monotonic() - started < 2  # no multi-second backoff on the sentinels
        without_kwargs.close()

        clients = RedisClients("redis://:datapw@/0", options)
        client = clients.client()
        client.set("before", b"1")
        old_port = s.primary.port
        took = s.kill_primary()
        assert s.primary.port != old_port and took < 20
        # The same client object: its dead connection fails once, the retry asks the
        # sentinels again and reaches the promoted replica.
        client.set("after", b"2")
        assert clients.client() is client
        assert client.get("before") == b"1" and client.get("after") == b"2"
        assert s.primary.client().get("after") == b"2"

        async def main():
            await clients.async_client().set("async-after", b"3")

        asyncio.run(main())
        assert s.primary.client().get("async-after") == b"3"
        clients.close()


# --- cluster ------------------------------------------------------------------------------------

def node_of(cluster, key):
    """The cluster node that holds ``key`` according to the servers themselves."""
    slot = cluster.nodes[0].command("CLUSTER", "KEYSLOT", key)
    for node in cluster.masters():
        for start, end, *_ in node.command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return cluster.nodes[[n.port for n in cluster.nodes].index(_[0][1])]
    raise AssertionError(f"slot {slot} not served")


@pytest.mark.parametrize("form", ["url", "flag-list", "flag-string"])
def test_cluster_client_sets_land_on_the_node_owning_the_slot(clean_redis_cluster, form):
    c = clean_redis_cluster
    seeds = [f"redis://{h}:{p}" for h, p in c.startup_nodes]
    location, options = {
        "url": (c.url, {}),
        "flag-list": (seeds, {"CLUSTER": True}),
        "flag-string": (",".join(seeds[:1]), {"CLUSTER": True}),
    }[form]
    clients = RedisClients(location, options)
    assert clients.is_cluster
    client = clients.client()
    assert isinstance(client, redis.cluster.RedisCluster)
    keys = [f"key:{i}" for i in range(30)]
    for key in keys:
        client.set(key, key.encode())
    masters = {n.port: n for n in c.masters()}
    for key in keys[:10]:
        owner = node_of(c, key)
        assert owner.port in masters
        assert owner.client().get(key) == key.encode()
        others = [n for n in masters.values() if n is not owner]
        # MovedError on redis-py >= 6; a plain ResponseError (its base) on 5.3.
        with pytest.raises(redis.exceptions.ResponseError, match=r"\d+ \S+:\d+$"):
            others[0].client().get(key)
    clients.close()


def test_cluster_async_client(clean_redis_cluster):
    clients = RedisClients(clean_redis_cluster.url)

    async def main():
        client = clients.async_client()
        assert isinstance(client, redis.asyncio.cluster.RedisCluster)
        for i in range(10):
            await client.set(f"a:{i}", b"x")
        keys = sorted([k async for k in ascan_keys(client, match="a:*")])
        assert keys == sorted(f"a:{i}".encode() for i in range(10))
        groups = group_by_node(client, [f"a:{i}" for i in range(10)])
        for name, group in groups.items():
            port = int(name.rsplit(":", 1)[1])
            assert all(node_of(clean_redis_cluster, k).port == port for k in group)

    asyncio.run(main())
    clients.close()


def test_key_slot_and_group_by_slot_match_the_server(redis_cluster):
    node = redis_cluster.nodes[0]
    keys = ["a", "b", "user:1", b"bytes-key", "{tag}x", "{tag}y", "\u00e9t\u00e9", "{}empty"]
    for key in keys:
        assert key_slot(key) == node.command("CLUSTER", "KEYSLOT", key)
    groups = group_by_slot(keys)
    assert groups[key_slot("{tag}x")] == ["{tag}x", "{tag}y"]  # a hash tag keeps them together
    assert sorted(repr(k) for g in groups.values() for k in g) == sorted(map(repr, keys))


def test_multi_key_operations_per_slot_in_one_cluster_pipeline(clean_redis_cluster):
    client = RedisClients(clean_redis_cluster.url).client()
    data = {f"m:{i}": str(i).encode() for i in range(40)}
    groups = group_by_slot(data)
    assert len(groups) > 3
    # The cluster pipeline blocks its mget()/mset() helpers; execute_command with one
    # slot's keys per command is allowed and is sent to each node in one round trip.
    pipe = client.pipeline()
    for slot_keys in groups.values():
        pipe.execute_command("MSET", *[x for k in slot_keys for x in (k, data[k])])
    pipe.execute()
    pipe = client.pipeline()
    for slot_keys in groups.values():
        pipe.execute_command("MGET", *slot_keys)
    got = dict(zip([k for ks in groups.values() for k in ks],
                   [v for vs in pipe.execute() for v in vs], strict=True))
    assert got == data
    by_node = group_by_node(client, data)
    assert len(by_node) == 3 and sum(map(len, by_node.values())) == 40
    pipe = client.pipeline()
    for slot_keys in groups.values():
        pipe.delete(*slot_keys)
    assert sum(pipe.execute()) == 40
    client.close()


def test_scan_keys_covers_every_primary(clean_redis_cluster, clean_redis_server):
    client = RedisClients(clean_redis_cluster.url).client()
    keys = {f"p:{i}".encode() for i in range(300)}
    for key in keys:
        client.set(key, b"1")
    client.set("other", b"1")
    assert set(scan_keys(client, match="p:*", count=50)) == keys
    assert len(list(scan_keys(client))) == 301
    per_node = {n.port: n.command("DBSIZE") for n in clean_redis_cluster.masters()}
    assert all(size > 0 for size in per_node.values())  # the keys really were spread out
    client.close()
    single = RedisClients(clean_redis_server.url).client()
    single.mset({"s:1": 1, "s:2": 2, "t:1": 3})
    assert sorted(scan_keys(single, match="s:*")) == [b"s:1", b"s:2"]
    single.close()


def test_unreachable_cluster_is_a_connection_error():
    clients = RedisClients(f"redis+cluster://127.0.0.1:{free_port()}",
                           {"SOCKET_CONNECT_TIMEOUT": 0.2})
    with pytest.raises(redis.exceptions.ConnectionError):
        clients.client()
