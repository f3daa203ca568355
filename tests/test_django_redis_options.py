"""django-redis's OPTIONS and DJANGO_REDIS_* settings on FastCache: translated where
FastCache has a direct equivalent (and reported by the fastcache.I301 check), refused with
an error naming what to write otherwise; REVERSE_KEY_FUNCTION where django-redis reads it;
the error classes without redis-py installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured
from django_fastcache.cache import FastCache
from django_fastcache.checks import check_django_redis_options
from django_fastcache.compat import COMPRESSORS, SERIALIZERS, translate_options

NO_SETTINGS = SimpleNamespace(CACHES={})


def translate(options, **settings):
    return translate_options(options, SimpleNamespace(CACHES={}, **settings))


@pytest.mark.parametrize(("path", "ours"), [
    ("django_redis.serializers.pickle.PickleSerializer", "pickle"),
    ("django_redis.serializers.json.JSONSerializer", "json"),
    ("django_redis.serializers.msgpack.MSGPackSerializer", "msgpack"),
])
def test_serializer_paths_become_our_names(path, ours):
    out, notes = translate({"SERIALIZER": path})
    assert out == {"SERIALIZER": ours}
    assert notes == [(f"OPTIONS['SERIALIZER'] = {path!r}", f"OPTIONS['SERIALIZER'] = {ours!r}")]


@pytest.mark.parametrize(("path", "ours"), [
    ("django_redis.compressors.identity.IdentityCompressor", "none"),
    ("django_redis.compressors.zlib.ZlibCompressor", "zlib"),
    ("django_redis.compressors.zstd.ZStdCompressor", "zstd"),
    ("django_redis.compressors.lz4.Lz4Compressor", "lz4"),
])
def test_compressor_paths_become_our_names(path, ours):
    out, _ = translate({"COMPRESSOR": path})
    assert out == {"COMPRESSOR": ours}


def test_our_own_serializer_and_compressor_names_pass_untouched():
    out, notes = translate({"SERIALIZER": "pickle", "COMPRESSOR": "zlib"})
    assert out == {"SERIALIZER": "pickle", "COMPRESSOR": "zlib"} and notes == []


@pytest.mark.parametrize(("name", "path", "named"), [
    ("SERIALIZER", "django_redis.serializers.yaml.YAMLSerializer", "'json', 'msgpack', 'pickle'"),
    ("SERIALIZER", "myapp.serializers.Custom", "'json', 'msgpack', 'pickle'"),
    ("COMPRESSOR", "django_redis.compressors.lzma.LzmaCompressor", "'lz4', 'none', 'zlib', 'zstd'"),
    ("COMPRESSOR", "django_redis.compressors.gzip.GzipCompressor", "'lz4', 'none', 'zlib', 'zstd'"),
])
def test_other_codec_paths_are_refused_naming_ours(name, path, named):
    with pytest.raises(ImproperlyConfigured, match=name) as caught:
        translate({name: path})
    assert named in str(caught.value) and path in str(caught.value)


def test_every_django_redis_codec_path_exists_in_django_redis():
    import importlib

    for path in [*SERIALIZERS, *COMPRESSORS]:
        module, _, name = path.rpartition(".")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # zstd/lz4 compressors import their optional libraries
            assert exc.name not in (module, "django_redis"), path
            continue
        assert hasattr(mod, name), path


@pytest.mark.parametrize(("client", "advice"), [
    ("django_redis.client.ShardClient", "Redis Cluster"),
    ("django_redis.client.HerdClient", "get_or_set"),
    ("django_redis.client.SentinelClient", "SENTINELS"),
    ("myapp.MyClient", "remove CLIENT_CLASS"),
])
def test_client_classes_without_an_equivalent_are_refused_naming_what_to_use(client, advice):
    with pytest.raises(ImproperlyConfigured, match="CLIENT_CLASS") as caught:
        translate({"CLIENT_CLASS": client})
    assert advice in str(caught.value)


def test_default_client_is_accepted():
    out, notes = translate({"CLIENT_CLASS": "django_redis.client.DefaultClient"})
    assert out == {} and "remove it" in notes[0][1]


def test_connection_pool_kwargs_become_our_options():
    out, notes = translate({
        "CONNECTION_POOL_KWARGS": {"max_connections": 7, "retry_on_timeout": True,
                                   "client_name": "site"},
        "CONNECTION_KWARGS": {"socket_keepalive": True},
    })
    assert out == {"MAX_CONNECTIONS": 7, "RETRY_ON_TIMEOUT": True,
                   "CONNECTION_KWARGS": {"socket_keepalive": True, "client_name": "site"}}
    assert [ours for _, ours in notes] == ["OPTIONS['MAX_CONNECTIONS']",
                                          "OPTIONS['RETRY_ON_TIMEOUT']",
                                          "OPTIONS['CONNECTION_KWARGS']"]


def test_client_and_pool_classes():
    assert translate({"REDIS_CLIENT_CLASS": "redis.client.Redis",
                      "CONNECTION_POOL_CLASS": "redis.connection.ConnectionPool",
                      "REPLICA_READ_ONLY": True})[0] == {}
    assert translate({"REDIS_CLIENT_KWARGS": {"health_check_interval": 5}})[0] == \
        {"HEALTH_CHECK_INTERVAL": 5}
    for name in ("REDIS_CLIENT_CLASS", "CONNECTION_POOL_CLASS", "CONNECTION_FACTORY"):
        with pytest.raises(ImproperlyConfigured, match="CONNECTION_KWARGS"):
            translate({name: "myapp.Custom"})
    with pytest.raises(ImproperlyConfigured, match="never writes to a replica"):
        translate({"REPLICA_READ_ONLY": False})
    with pytest.raises(ImproperlyConfigured, match="DJANGO_REDIS_CONNECTION_FACTORY"):
        translate({}, DJANGO_REDIS_CONNECTION_FACTORY="myapp.Factory")
    with pytest.raises(ImproperlyConfigured, match="LOCATION"):
        translate({"USERNAME": "app"})


def test_password_is_refused_naming_location_without_echoing_it():
    with pytest.raises(ImproperlyConfigured, match="LOCATION") as caught:
        translate({"PASSWORD": "hunter2"})
    assert "hunter2" not in str(caught.value)


def test_parser_class():
    out, notes = translate({"PARSER_CLASS": "redis.connection._HiredisParser"})
    assert out == {} and "hiredis" in notes[0][1]
    with pytest.raises(ImproperlyConfigured, match="PARSER_CLASS"):
        translate({"PARSER_CLASS": "myapp.Parser"})


def test_log_ignored_exceptions_and_close_connection():
    assert translate({"LOG_IGNORED_EXCEPTIONS": True})[0] == {}
    assert translate({"LOG_IGNORED_EXCEPTIONS": False})[0] == {"ERROR_LOG_INTERVAL": 3600.0}
    assert translate({}, DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS=True)[1][0][0] == \
        "settings.DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS"
    assert translate({"CLOSE_CONNECTION": False})[0] == {}
    with pytest.raises(ImproperlyConfigured, match="pooled"):
        translate({"CLOSE_CONNECTION": True})
    with pytest.raises(ImproperlyConfigured, match="DJANGO_REDIS_CLOSE_CONNECTION"):
        translate({}, DJANGO_REDIS_CLOSE_CONNECTION=True)


def test_django_redis_settings():
    assert translate({}, DJANGO_REDIS_IGNORE_EXCEPTIONS=False)[0] == {"IGNORE_EXCEPTIONS": False}
    # The cache's own option wins over the global setting.
    assert translate({"IGNORE_EXCEPTIONS": True}, DJANGO_REDIS_IGNORE_EXCEPTIONS=False)[0] == \
        {"IGNORE_EXCEPTIONS": True}
    assert translate({}, DJANGO_REDIS_SCAN_ITERSIZE=100) == \
        ({}, [("settings.DJANGO_REDIS_SCAN_ITERSIZE",
               "nothing (keys()/iter_keys()/delete_pattern() scan in batches of 500)")])
    with pytest.raises(ImproperlyConfigured, match="django_fastcache.redis"):
        translate({}, DJANGO_REDIS_LOGGER="mylogger")
    # ... unless a django-redis cache, whose setting it is, is still configured.
    still = SimpleNamespace(DJANGO_REDIS_LOGGER="mylogger",
                            CACHES={"old": {"BACKEND": "django_redis.cache.RedisCache"}})
    assert translate_options({}, still) == ({}, [])


def test_django_redis_settings_leave_the_embedded_default_alone(settings):
    settings.DJANGO_REDIS_IGNORE_EXCEPTIONS = False
    settings.DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = False
    assert translate_options({}, settings, redis=False) == ({}, [])
    FastCache("compat-embedded-settings", {})  # no IGNORE_EXCEPTIONS forced on it
    cache = FastCache("redis://127.0.0.1:1/0", {})
    assert cache._tier.policy.ignore_exceptions is False


def test_backend_builds_from_a_django_redis_entry():
    cache = FastCache("redis://127.0.0.1:1/0", {"OPTIONS": {
        "CLIENT_CLASS": "django_redis.client.DefaultClient",
        "SERIALIZER": "django_redis.serializers.pickle.PickleSerializer",
        "CONNECTION_POOL_KWARGS": {"max_connections": 3},
        "SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5,
        "PARSER_CLASS": "redis.connection.HiredisParser",
    }})
    assert cache._tier.clients.client().connection_pool.max_connections == 3
    # SERIALIZER = "pickle": values are pickled (and signed), flagged in the header byte.
    assert cache._engine.dumps({"a": 1}) != FastCache("x", {})._engine.dumps({"a": 1})


def test_embedded_default_accepts_the_codec_paths():
    cache = FastCache("compat-options", {"OPTIONS": {
        "SERIALIZER": "django_redis.serializers.pickle.PickleSerializer"}})
    cache.set("k", {"a": 1})
    assert cache.get("k") == {"a": 1}


def test_system_check_names_our_option(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django_fastcache.cache.FastCache"},
        "moved": {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": "redis://x/0",
                  "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient",
                              "CONNECTION_POOL_KWARGS": {"max_connections": 3}}},
        "broken": {"BACKEND": "django_fastcache.cache.FastCache",
                   "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"}},
    }
    found = check_django_redis_options()
    assert [m.id for m in found] == ["fastcache.I301", "fastcache.I301"]
    assert all(m.level == 20 for m in found)  # INFO
    assert "CACHES['moved']" in found[1].msg and "OPTIONS['MAX_CONNECTIONS']" in found[1].msg


def test_reverse_key_function_at_the_top_level_of_the_entry():
    def key_func(key, prefix, version):
        return f"{prefix}|{version}|{key}"

    def reverse(final):
        return final.split("|", 2)[2]

    cache = FastCache("compat-reverse", {"KEY_FUNCTION": key_func,
                                         "REVERSE_KEY_FUNCTION": reverse})
    cache.clear()
    cache.set("a1", 1)
    assert cache.keys("a*") == ["a1"]
    assert cache.client.reverse_key(cache.make_key("a1")) == "a1"
    path = "tests.test_django_redis_options.reverse_key"
    with pytest.raises(ImproperlyConfigured, match="two REVERSE_KEY_FUNCTIONs"):
        FastCache("compat-reverse", {"REVERSE_KEY_FUNCTION": reverse,
                                     "OPTIONS": {"REVERSE_KEY_FUNCTION": path}})


def test_set_returns_bool_on_the_embedded_default():
    cache = FastCache("compat-set", {})
    cache.clear()
    assert cache.set("k", 1) is True
    assert cache.set("k", 2, nx=True) is False and cache.get("k") == 1
    assert cache.set("other", 2, xx=True) is False and cache.get("other") is None


def test_errors_import_without_redis():
    code = textwrap.dedent("""
        import sys
        sys.modules["redis"] = None  # import redis -> ImportError
        import django_fastcache
        from django_fastcache import errors
        e = errors.interrupted("down", TimeoutError("t"))
        assert type(e) is errors.ConnectionTimeout, type(e)
        assert isinstance(e, TimeoutError) and isinstance(e, ConnectionError)
        assert type(errors.interrupted("down", OSError())) is errors.ConnectionInterrupted
        assert type(errors.interrupted("breaker open")) is errors.ConnectionInterrupted
        assert "django" not in sys.modules
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
