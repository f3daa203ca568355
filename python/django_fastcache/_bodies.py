"""Body transforms the wire codec (``_core``) calls into Python for: the zstd and lz4
compressors and the JSON body format. zlib, msgpack and the header stay in C++.

Every decompressor here is bounded: it never produces more than ``limit`` bytes (the
cache's ``MAX_VALUE_BYTES``), whatever the compressed frame's header claims, and raises
:class:`~django_fastcache.errors.DecodeError` instead. The compression libraries are
imported on first use, so a site that does not choose them does not need them installed.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .errors import DecodeError

__all__ = ["ZSTD", "LZ4", "compress", "decompress", "json_dumps", "json_loads", "require"]

# Compressor ids, as the wire format's second header byte names them (codec.hpp).
ZSTD = 1
LZ4 = 2

_PACKAGES = {ZSTD: ("zstandard", "zstd"), LZ4: ("lz4.frame", "lz4")}
_local = threading.local()


def require(compressor: int) -> None:
    """Imports the library of ``compressor``; ImportError names the pip extra to install."""
    module, extra = _PACKAGES[compressor]
    try:
        __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"the {extra} compressor needs the {module.split('.')[0]!r} package: "
            f"pip install 'django-fastcache[{extra}]'"
        ) from exc


def compress(compressor: int, data: bytes, level: int) -> bytes:
    if compressor == ZSTD:
        import zstandard

        # A ZstdCompressor is not safe to share between threads; one per thread and level.
        cache = getattr(_local, "zstd", None)
        if cache is None:
            cache = _local.zstd = {}
        cctx = cache.get(level)
        if cctx is None:
            cctx = cache[level] = zstandard.ZstdCompressor(level=level)
        return cctx.compress(data)
    if compressor == LZ4:
        import lz4.frame

        return lz4.frame.compress(data, compression_level=level)
    raise ValueError(f"unknown compressor id {compressor}")


def decompress(compressor: int, data: bytes, limit: int) -> bytes:
    """The decompressed body, at most ``limit`` bytes; DecodeError if corrupt, truncated,
    larger than ``limit``, or if the library is not installed here."""
    try:
        if compressor == ZSTD:
            return _zstd_decompress(data, limit)
        if compressor == LZ4:
            return _lz4_decompress(data, limit)
    except ImportError as exc:
        raise DecodeError(f"value compressed with a compressor not installed here ({exc})") from exc
    except DecodeError:
        raise
    except Exception as exc:  # each library has its own error types
        raise DecodeError(f"corrupt compressed value ({exc})") from exc
    raise DecodeError(f"unknown compressor id {compressor}")


def _zstd_decompress(data: bytes, limit: int) -> bytes:
    import zstandard

    # ZstdDecompressor.decompress() trusts a frame's declared content size over its
    # max_output_size, so a 2 KB frame declaring 64 MiB would allocate 64 MiB: refuse
    # such a frame from its header, then stream, never asking for more than limit + 1.
    declared = zstandard.frame_content_size(data)
    if declared > limit:
        raise DecodeError(f"compressed value declares {declared} bytes, over MAX_VALUE_BYTES")
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
    chunks, size = [], 0
    while size <= limit:
        chunk = reader.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise DecodeError("compressed value larger than MAX_VALUE_BYTES")
    return b"".join(chunks)


def _lz4_decompress(data: bytes, limit: int) -> bytes:
    import lz4.frame

    d = lz4.frame.LZ4FrameDecompressor()
    out = d.decompress(data, max_length=limit)
    if not d.eof:
        raise DecodeError("compressed value truncated or larger than MAX_VALUE_BYTES")
    if d.unused_data:
        raise DecodeError("bytes after compressed value")
    return out


def _encoder() -> json.JSONEncoder:
    encoder = getattr(_local, "json", None)
    if encoder is None:
        from django.core.serializers.json import DjangoJSONEncoder

        # DjangoJSONEncoder: the conversions django-redis's JSON serializer makes (datetime,
        # date, time, timedelta, Decimal, UUID and lazy strings become strings). NaN and
        # infinities are not JSON: such values are pickled (or refused) instead.
        encoder = _local.json = DjangoJSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return encoder


def json_dumps(value: Any) -> bytes | None:
    """``value`` as UTF-8 JSON, or None when JSON cannot hold it (the codec then pickles
    it under the PICKLE policy)."""
    try:
        return _encoder().encode(value).encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None


def json_loads(data: bytes) -> Any:
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"invalid JSON body ({exc})") from exc
    if b"\\u" in data:
        _check_strings(value)
    return value


def _check_strings(value: Any) -> None:
    """Refuses a "\\ud800" escape (a lone surrogate): no valid UTF-8 text holds one, and
    the msgpack body refuses it too, so every format decodes to the same set of strings."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DecodeError("JSON body holds a lone surrogate") from exc
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
