"""pytest fixtures that share real Redis deployments across the test session.

Loaded for every test module through ``pytest_plugins`` in ``tests/conftest.py``. The
session-scoped fixtures start a deployment once, on first use; the ``clean_*`` variants
hand out the same deployment emptied (``FLUSHALL`` on every primary) before the test.
Tests that break a deployment (kill a primary, pause a node) start their own with the
classes of :mod:`redis_servers` instead of using these.
"""

from __future__ import annotations

import pytest
from redis_servers import RedisCluster, RedisSentinelSet, RedisServer

__all__ = [
    "clean_redis_cluster",
    "clean_redis_sentinel",
    "clean_redis_server",
    "redis_cluster",
    "redis_sentinel",
    "redis_server",
]


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session, also listening on a Unix socket."""
    with RedisServer(unix_socket=True) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster():
    """A three-master Redis Cluster for the session (no replicas)."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel():
    """A primary, a replica and three sentinels for the session (service "mymaster")."""
    with RedisSentinelSet() as sentinel_set:
        yield sentinel_set


@pytest.fixture
def clean_redis_server(redis_server):
    redis_server.command("FLUSHALL")
    return redis_server


@pytest.fixture
def clean_redis_cluster(redis_cluster):
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def clean_redis_sentinel(redis_sentinel):
    redis_sentinel.flush()
    return redis_sentinel
