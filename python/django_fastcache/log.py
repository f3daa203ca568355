"""JSON logging for Django: a python-json-logger compatible formatter whose record-to-JSON
step runs in C++, request context through ``contextvars``, redaction, and ``log_event``.

Use it from ``LOGGING``::

    "formatters": {"json": {"()": "django_fastcache.log.JsonFormatter",
                            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"}}

See ``docs/logging.md`` for the settings and how the output compares to python-json-logger.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import logging
import re
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from . import _core

__all__ = [
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_REDACT_WORDS",
    "JsonFormatter",
    "REDACTED",
    "RESERVED_ATTRS",
    "RequestContextMiddleware",
    "bind_context",
    "command_context",
    "install_integrations",
    "get_request_context",
    "json_default",
    "log_event",
]

#: Attributes every ``LogRecord`` has; they are never written as extra fields.
RESERVED_ATTRS: tuple[str, ...] = tuple(
    sorted(
        [
            "args",
            "asctime",
            "created",
            "exc_info",
            "exc_text",
            "filename",
            "funcName",
            "levelname",
            "levelno",
            "lineno",
            "module",
            "msecs",
            "message",
            "msg",
            "name",
            "pathname",
            "process",
            "processName",
            "relativeCreated",
            "stack_info",
            "thread",
            "threadName",
        ]
        + (["taskName"] if sys.version_info >= (3, 12) else [])
    )
)

#: Key names (folded: case-insensitive, ``_`` and ``-`` ignored) that mark a value secret
#: when they occur anywhere in a key: the rule of Django's error reporter
#: (``SafeExceptionReporterFilter.hidden_settings``: API, AUTH, TOKEN, KEY, SECRET, PASS,
#: SIGNATURE, COOKIE) plus session and CSRF names and credentials.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "api",
    "auth",
    "token",
    "key",
    "secret",
    "pass",
    "signature",
    "cookie",
    "sessionid",
    "csrf",
    "credential",
)

#: Short names that mark a value secret when they are a whole word of a key (``user_otp``,
#: ``otpCode``, ``X-JWT``): as substrings they would hide innocent keys (``footprint``).
DEFAULT_REDACT_WORDS: tuple[str, ...] = ("pwd", "otp", "totp", "jwt")

#: What a redacted value (or a redacted part of a string) becomes.
REDACTED = "[REDACTED]"
_CIRCULAR = "[Circular]"
_TOO_DEEP = "[MaxDepth]"
_MAX_DEPTH = 200

_VALUE_PATTERNS = {"card": 1, "email": 2, "bearer": 4, "query": 8}
_MAX_FORMAT_ARGS_REPR = 200
_HOOKS = (
    "add_fields",
    "process_log_record",
    "serialize_log_record",
    "jsonify_log_record",
)

# The request's context: a dict (request_id, user_id, method, path, plus bound fields), or
# None outside a request. A new dict per request, so copies of a context never share one.
_context: ContextVar[dict[str, Any] | None] = ContextVar("django_fastcache_log", default=None)

_STYLE_DOLLAR = re.compile(
    r"\$(?:\$|\{(?P<braced>.+?)\}|(?P<named>[_a-z][_a-z0-9]*))", re.IGNORECASE
)
_STYLE_BRACE = re.compile(r"\{(.+?)\}")
_STYLE_PERCENT = re.compile(r"%\((.+?)\)")


# --- default conversions ----------------------------------------------------------------


def _request_classes() -> tuple[type, ...]:
    try:
        from django.http import HttpRequest
    except ImportError:  # pragma: no cover - Django is a dependency
        return ()
    return (HttpRequest,)


def _summarize_django_request(request: Any) -> dict[str, Any]:
    return {"method": getattr(request, "method", None), "path": getattr(request, "path", None)}


def _summarize_socket(sock: Any) -> dict[str, Any]:
    try:
        peer = sock.getpeername()
    except (OSError, AttributeError):
        peer = None
    if isinstance(peer, tuple) and len(peer) >= 2:
        peer = f"{peer[0]}:{peer[1]}"
    return {"socket": True, "peer": peer}


def json_default(obj: Any) -> Any:
    """python-json-logger's conversions for values JSON has no type for, plus summaries of
    Django requests and sockets. Every value gets some JSON: the last resort is ``str()``.
    """
    if isinstance(obj, (datetime.date, datetime.time)):  # datetime is a date
        return obj.isoformat()
    if isinstance(obj, BaseException):
        return f"{obj.__class__.__name__}: {obj}"
    if isinstance(obj, TracebackType):
        return "".join(traceback.format_tb(obj)).strip()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, enum.EnumMeta):
        return [member.value for member in obj]
    if isinstance(obj, (bytes, bytearray)):
        return base64.urlsafe_b64encode(obj).decode("ascii")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, type):
        return obj.__name__
    if isinstance(obj, _request_classes()):
        return _summarize_django_request(obj)
    if isinstance(obj, socket.socket):
        return _summarize_socket(obj)
    try:
        return str(obj)
    except Exception:
        pass
    try:
        return repr(obj)
    except Exception:
        return "__could_not_encode__"


# Exact types the C++ encoder converts without calling json_default, to the same result:
# 1 isoformat(), 2 str(), 3 UUID text, 4 URL-safe base64.
_FAST_TYPES = {
    datetime.datetime: 1,
    datetime.date: 1,
    datetime.time: 1,
    decimal.Decimal: 2,
    set: 2,
    frozenset: 2,
    uuid.UUID: 3,
    bytes: 4,
    bytearray: 4,
}


# --- the formatter ------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """A ``logging.Formatter`` that writes each record as one JSON object, accepting the
    arguments of python-json-logger's ``JsonFormatter`` and producing the same keys, order
    and values (see docs/logging.md for the few deliberate differences).

    Thread safety: one instance may be shared by any number of handlers and threads.
    Settings are read at construction; build a new formatter to change them.
    Exceptions: ``format`` never fails because of a value in the record: cycles, odd dict
    keys, NaN and values whose ``str()`` raises all become valid JSON.
    """

    def __init__(
        self,
        fmt: str | Sequence[str] | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        *,
        prefix: str = "",
        rename_fields: Mapping[str, str] | None = None,
        rename_fields_keep_missing: bool = False,
        static_fields: Mapping[str, Any] | None = None,
        reserved_attrs: Sequence[str] | None = None,
        timestamp: bool | str = False,
        defaults: Mapping[str, Any] | None = None,
        exc_info_as_array: bool = False,
        stack_info_as_array: bool = False,
        json_default: Callable[[Any], Any] | None = None,
        json_encoder: type | None = None,
        json_serializer: Callable[..., str] | None = None,
        json_indent: int | str | None = None,
        json_ensure_ascii: bool = True,
        redact_keys: Iterable[str] | None = DEFAULT_REDACT_KEYS,
        redact_key_words: Iterable[str] | None = DEFAULT_REDACT_WORDS,
        redact_values: Iterable[str] = ("query",),
        request_context: bool = True,
    ) -> None:
        # logging.Formatter.__init__ is not called: it rejects style "," and fmt lists.
        if fmt is None or isinstance(fmt, str):
            if style in logging._STYLES:
                style_obj = logging._STYLES[style][0](fmt)
                if validate:
                    style_obj.validate()
                self._style = style_obj
                self._fmt = style_obj._fmt
            elif style == "," or not validate:
                self._style = style
                self._fmt = fmt
            else:
                raise ValueError(f"style must be one of '%', '{{', '$', ',' (got {style!r})")
            self._required_fields = self.parse()
        elif isinstance(fmt, Sequence):
            self._style = "__sequence__"
            self._fmt = str(fmt)
            self._required_fields = list(fmt)
        else:
            raise TypeError(f"fmt must be a str or a sequence of field names, not {fmt!r}")
        self.datefmt = datefmt

        self.prefix = prefix
        # Rebuilt key by key so dictConfig's converting mappings are resolved.
        self.rename_fields = {k: rename_fields[k] for k in rename_fields} if rename_fields else {}
        self.static_fields = {k: static_fields[k] for k in static_fields} if static_fields else {}
        self.rename_fields_keep_missing = rename_fields_keep_missing
        self.reserved_attrs = set(reserved_attrs if reserved_attrs is not None else RESERVED_ATTRS)
        self.timestamp = timestamp
        self._skip_fields = set(self._required_fields) | self.reserved_attrs
        self.defaults = {k: defaults[k] for k in defaults} if defaults else {}
        self.exc_info_as_array = exc_info_as_array
        self.stack_info_as_array = stack_info_as_array

        self.json_default = json_default
        self.json_encoder = json_encoder
        self.json_serializer = json_serializer
        self.json_indent = json_indent
        self.json_ensure_ascii = json_ensure_ascii
        self.redact_keys = tuple(redact_keys) if redact_keys else ()
        self.redact_key_words = tuple(redact_key_words) if redact_key_words else ()
        self.redact_values = tuple(redact_values)
        self.request_context = request_context

        self._encoder = self._build_encoder()
        cls = type(self)
        self._fast = json_serializer is None and all(
            getattr(cls, hook) is getattr(JsonFormatter, hook) for hook in _HOOKS
        )

    # -- configuration --

    def _build_encoder(self) -> _core.LogEncoder:
        for option in ("redact_keys", "redact_key_words"):
            for name in getattr(self, option):
                if not isinstance(name, str):
                    raise TypeError(f"{option} must be strings, got {name!r}")
        flags = 0
        for name in self.redact_values:
            if name not in _VALUE_PATTERNS:
                raise ValueError(
                    f"redact_values: unknown pattern {name!r}; choose from "
                    f"{', '.join(sorted(_VALUE_PATTERNS))}"
                )
            flags |= _VALUE_PATTERNS[name]
        indent = self.json_indent
        if indent is not None and not isinstance(indent, str):
            indent = " " * indent
        if self.json_default is not None:
            default, fast_types = self.json_default, {}
        elif self.json_encoder is not None:
            default, fast_types = self.json_encoder().default, {}
        else:
            default, fast_types = json_default, _FAST_TYPES
        encoder = _core.LogEncoder(
            ensure_ascii=bool(self.json_ensure_ascii),
            indent=indent,
            default=default,
            fast_types=dict(fast_types),
            redact_keys=list(self.redact_keys),
            redact_values=flags,
            redacted=REDACTED,
            circular=_CIRCULAR,
            too_deep=_TOO_DEEP,
            max_depth=_MAX_DEPTH,
            redact_words=list(self.redact_key_words),
        )

        rename = self._get_rename
        template: dict[Any, Any] = {}
        for field in self.defaults:
            template[rename(field)] = self.defaults[field]
        for field in self._required_fields:
            template[rename(field)] = None
        static_keys = set()
        for key, value in self.static_fields.items():
            template[rename(key)] = value
            static_keys.add(rename(key))
        required = [
            (rename(field), field)
            for field in self._required_fields
            if rename(field) not in static_keys
        ]
        timestamp_key = None
        if self.timestamp:
            timestamp_key = self.timestamp if isinstance(self.timestamp, str) else "timestamp"
        keep_missing = list(self.rename_fields.values()) if self.rename_fields_keep_missing else []
        self._noscan = frozenset({rename("exc_info"), rename("stack_info")})
        encoder.configure_record(
            template=template,
            required=required,
            rename=dict(self.rename_fields),
            skip=frozenset(self._skip_fields),
            context_var=_context if self.request_context else None,
            timestamp_key=timestamp_key,
            keep_missing=keep_missing,
            prefix=self.prefix,
            needs_asctime="asctime" in self._required_fields,
            noscan=self._noscan,
            request_key="request" if "request" not in self._skip_fields else None,
            context_resolver=_resolve_pending,
        )
        return encoder

    def parse(self) -> list[str]:
        """The field names that ``fmt`` asks for, in order (python-json-logger's hook)."""
        if self._fmt is None:
            return []
        style = self._style
        if isinstance(style, str):
            if style == "__sequence__":
                raise RuntimeError("parse() is not used when fmt is a sequence of names")
            if style == ",":
                return [field.strip() for field in self._fmt.split(",") if field.strip()]
            raise ValueError(f"style {style!r} is not supported; override parse() for it")
        if isinstance(style, logging.StringTemplateStyle):
            return [
                m.group("braced") or m.group("named")
                for m in _STYLE_DOLLAR.finditer(self._fmt)
                if m.group("braced") or m.group("named")
            ]
        if isinstance(style, logging.StrFormatStyle):
            return _STYLE_BRACE.findall(self._fmt)
        if isinstance(style, logging.PercentStyle):
            return _STYLE_PERCENT.findall(self._fmt)
        raise ValueError(f"style {style!r} is not supported; override parse() for it")

    # -- formatting --

    def format(self, record: logging.LogRecord) -> str:
        if self._fast:
            return self._encoder.format(self, record)
        # A subclass overrides a hook: the same steps, through the hooks.
        message_dict: dict[str, Any] = {}
        if isinstance(record.msg, dict):
            message_dict = record.msg.copy()
            record.message = ""
        else:
            try:
                record.message = record.getMessage()
            except Exception as exc:
                record.message, key, error = self._message_failure(record, exc)
                message_dict[key] = error
        if "asctime" in self._required_fields:
            record.asctime = self.formatTime(record, self.datefmt)
        if record.exc_info or record.exc_text or record.stack_info:
            message_dict = self._exception_fields(record, message_dict)
        log_data: dict[str, Any] = {}
        self.add_fields(log_data, record, message_dict)
        log_data = self.process_log_record(log_data)
        return self.serialize_log_record(log_data)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """Fill ``log_data`` from the record: defaults, fmt fields, static fields, request
        context, the dict message, extras, timestamp (each overriding the ones before)."""
        self._encoder.add_fields(self, log_data, record, message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Hook for subclasses: change the data before it is serialized."""
        return log_data

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        return self.prefix + self.jsonify_log_record(log_data)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        if self.json_serializer is not None:
            return self.json_serializer(
                log_data,
                default=self.json_default,
                cls=self.json_encoder,
                indent=self.json_indent,
                ensure_ascii=self.json_ensure_ascii,
            )
        return self._encoder.dumps(log_data, self._noscan)

    def formatException(self, ei: Any) -> str | list[str]:  # type: ignore[override]
        text = super().formatException(ei)
        return text.splitlines() if self.exc_info_as_array else text

    def formatStack(self, stack_info: str) -> str | list[str]:  # type: ignore[override]
        text = super().formatStack(stack_info)
        return text.splitlines() if self.stack_info_as_array else text

    def _get_rename(self, key: Any) -> Any:
        return self.rename_fields.get(key, key)

    # -- callbacks from the C++ encoder (rare paths) --

    def _message_failure(
        self, record: logging.LogRecord, exc: BaseException
    ) -> tuple[str, str, str]:
        """A message its arguments do not fit (``logger.info("%s %s", 1)``): logging itself
        would print a traceback to stderr and lose the line. The line is written with the
        raw message, and a ``format_error`` field naming the error and the arguments."""
        try:
            message = str(record.msg)
        except Exception:
            message = "__could_not_encode__"
        try:
            args = repr(record.args)
        except Exception:
            args = "?"
        if len(args) > _MAX_FORMAT_ARGS_REPR:
            args = args[:_MAX_FORMAT_ARGS_REPR] + "..."
        return message, "format_error", f"{type(exc).__name__}: {exc}; args={args}"

    def _exception_fields(
        self, record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> dict[str, Any]:
        if record.exc_info and not message_dict.get("exc_info"):
            message_dict["exc_info"] = self._exception_value(record)
        if not message_dict.get("exc_info") and record.exc_text:
            message_dict["exc_info"] = record.exc_text
        if record.stack_info and not message_dict.get("stack_info"):
            message_dict["stack_info"] = self.formatStack(record.stack_info)
        return message_dict

    def _exception_value(self, record: logging.LogRecord) -> str | list[str]:
        if type(self).formatException is not JsonFormatter.formatException:
            return self.formatException(record.exc_info)
        # The text logging.Formatter caches on the record: formatted once per record,
        # however many handlers (of any formatter class) write it.
        if not record.exc_text:
            record.exc_text = logging.Formatter.formatException(self, record.exc_info)
        text = record.exc_text
        return text.splitlines() if self.exc_info_as_array else text

    def _timestamp_value(self, record: logging.LogRecord) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)

    def _request_summary(self, record: logging.LogRecord, value: Any) -> Any:
        """The ``request`` extra of Django's records (django.request: an HttpRequest;
        django.server: the socket) as {method, path, status}."""
        status = record.__dict__.get("status_code")
        if isinstance(value, _request_classes()):
            summary = _summarize_django_request(value)
        else:
            if not isinstance(value, socket.socket):
                return value
            summary = {"method": None, "path": None}
            args = record.args
            line = args[0] if isinstance(args, tuple) and args else None
            if isinstance(line, str):
                parts = line.split()
                if len(parts) >= 2:
                    summary = {"method": parts[0], "path": parts[1]}
        summary["status"] = status
        return summary


# --- request context ----------------------------------------------------------------------


def get_request_context() -> dict[str, Any]:
    """A copy of the current context (request, command or task; empty outside one),
    without its private entries."""
    ctx = _context.get()
    if not ctx:
        return {}
    if _PENDING in ctx:
        _resolve_pending(ctx)
    return {k: v for k, v in ctx.items() if not (isinstance(k, str) and k.startswith("_"))}


@contextmanager
def bind_context(**fields: Any):
    """Add fields to every log line written inside the ``with`` block (this thread or task
    only); they are merged over the request context, if any."""
    ctx = _context.get()
    token = _context.set({**(ctx or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


# A context whose user is not known yet holds the Django request under this key; the
# formatter calls _resolve_pending before writing a line (see _resolve_pending).
_PENDING = "_pending"


def _resolve_pending(ctx: dict[str, Any]) -> None:
    """Fills ``user_id`` from the user a DRF view (or anything else) set on the request
    since the context was made. DRF's ``Request.user`` setter assigns the user to the
    Django request too, so the authenticated user is in ``request.__dict__``; a user that
    is still an unevaluated ``SimpleLazyObject`` (session auth not consulted yet) is left
    alone: evaluating it here would cost a session and a database query per line."""
    request = ctx.get(_PENDING)
    if request is None:
        ctx.pop(_PENDING, None)
        return
    user = getattr(request, "__dict__", {}).get("user")
    if user is None:
        return
    wrapped = getattr(user, "_wrapped", None)
    if wrapped is not None:  # a SimpleLazyObject
        from django.utils.functional import empty

        if wrapped is empty:
            return
        user = wrapped
    user_id = _user_id(user)
    if user_id is not None:
        ctx["user_id"] = user_id
        ctx.pop(_PENDING, None)


_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,200}")
_LEVELS_DEFAULT = {2: logging.INFO, 3: logging.INFO, 4: logging.WARNING, 5: logging.ERROR}
_SETTINGS_DEFAULTS: dict[str, Any] = {
    "REQUEST_ID_HEADER": "X-Request-ID",
    "CORRELATION_ID_HEADER": "X-Correlation-ID",
    "ACCESS_LOG": True,
    "ACCESS_LOGGER": "django_fastcache.access",
    "ACCESS_LEVELS": None,
    "USER_AGENT_MAX_LENGTH": 256,
    "LOG_QUERY_STRING": False,
    "CONTEXT_HOOK": None,
    "COMMAND_CONTEXT": True,
    "CELERY_CONTEXT": True,
}
_CLIENT_IP_MAX_LENGTH = 200


def _level(value: Any, option: str) -> int:
    from django.core.exceptions import ImproperlyConfigured

    if isinstance(value, str):
        level = logging.getLevelName(value.upper())
        if isinstance(level, int):
            return level
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ImproperlyConfigured(f"FASTCACHE_LOG_CONTEXT[{option!r}]: {value!r} is not a level")


def _log_settings() -> dict[str, Any]:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.utils.module_loading import import_string

    given = getattr(settings, "FASTCACHE_LOG_CONTEXT", {}) or {}
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured("FASTCACHE_LOG_CONTEXT must be a dict")
    unknown = set(given) - set(_SETTINGS_DEFAULTS)
    if unknown:
        raise ImproperlyConfigured(
            f"FASTCACHE_LOG_CONTEXT: unknown option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(_SETTINGS_DEFAULTS)}"
        )
    conf = {**_SETTINGS_DEFAULTS, **given}
    if not isinstance(conf["REQUEST_ID_HEADER"], str) or not conf["REQUEST_ID_HEADER"]:
        raise ImproperlyConfigured(
            "FASTCACHE_LOG_CONTEXT['REQUEST_ID_HEADER'] must be a header name"
        )
    corr = conf["CORRELATION_ID_HEADER"]
    if corr is not None and (not isinstance(corr, str) or not corr):
        raise ImproperlyConfigured(
            "FASTCACHE_LOG_CONTEXT['CORRELATION_ID_HEADER'] must be a header name or None"
        )
    if not isinstance(conf["ACCESS_LOGGER"], str):
        raise ImproperlyConfigured("FASTCACHE_LOG_CONTEXT['ACCESS_LOGGER'] must be a logger name")
    levels = dict(_LEVELS_DEFAULT)
    if conf["ACCESS_LEVELS"] is not None:
        if not isinstance(conf["ACCESS_LEVELS"], Mapping):
            raise ImproperlyConfigured(
                "FASTCACHE_LOG_CONTEXT['ACCESS_LEVELS'] must map a status class (1-5) or a "
                "status code to a level"
            )
        for key, value in conf["ACCESS_LEVELS"].items():
            if not isinstance(key, int) or not (1 <= key <= 5 or 100 <= key <= 599):
                raise ImproperlyConfigured(
                    f"FASTCACHE_LOG_CONTEXT['ACCESS_LEVELS']: {key!r} is neither a status "
                    "class (1-5) nor a status code"
                )
            levels[key] = _level(value, "ACCESS_LEVELS")
    conf["ACCESS_LEVELS"] = levels
    ua_max = conf["USER_AGENT_MAX_LENGTH"]
    if not isinstance(ua_max, int) or isinstance(ua_max, bool) or ua_max < 0:
        raise ImproperlyConfigured(
            "FASTCACHE_LOG_CONTEXT['USER_AGENT_MAX_LENGTH'] must be a non-negative int"
        )
    hook = conf["CONTEXT_HOOK"]
    if isinstance(hook, str):
        try:
            hook = import_string(hook)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"FASTCACHE_LOG_CONTEXT['CONTEXT_HOOK']: cannot import {conf['CONTEXT_HOOK']!r}: "
                f"{exc}"
            ) from exc
    if hook is not None and not callable(hook):
        raise ImproperlyConfigured(
            "FASTCACHE_LOG_CONTEXT['CONTEXT_HOOK'] must be a callable or its dotted path"
        )
    conf["CONTEXT_HOOK"] = hook
    rest = getattr(settings, "REST_FRAMEWORK", None) or {}
    conf["NUM_PROXIES"] = rest.get("NUM_PROXIES") if isinstance(rest, Mapping) else None
    return conf


# Kept for callers of the old name.
_middleware_settings = _log_settings


def _user_id(user: Any) -> Any:
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user.pk


_query_redactor: Any = None


def _redact_query(query: str) -> str:
    """A query string with the values of secret-looking parameters replaced, by the default
    key rule (the formatter's own redaction applies on top, with its settings)."""
    global _query_redactor
    if _query_redactor is None:
        _query_redactor = JsonFormatter()._encoder
    return _query_redactor.redact_string(query, True)


def _response_size(response: Any) -> int | None:
    if response is None:
        return None
    if getattr(response, "streaming", False):
        length = response.get("Content-Length") if hasattr(response, "get") else None
        return int(length) if length and length.isdigit() else None
    content = getattr(response, "content", None)
    return len(content) if isinstance(content, (bytes, bytearray)) else None


class RequestContextMiddleware:
    """Puts ``request_id`` (the ``X-Request-ID`` header when it is well formed, else a new
    one; echoed on the response), ``correlation_id`` (from a configurable header, validated
    the same way), ``user_id``, ``method`` and ``path`` into a context variable that
    ``JsonFormatter`` adds to every line written while the request runs, in sync and async
    views alike, and writes one access-log line per request with ``status``,
    ``duration_ms``, ``client_ip``, ``user_agent`` and ``response_size``, at a level that
    follows the status (2xx/3xx INFO, 4xx WARNING, 5xx ERROR by default).

    ``user_id`` comes from ``request.user`` when the middleware runs after
    ``AuthenticationMiddleware``; a user set later (DRF's token or session authentication
    inside the view) is picked up by lines written after it, without authenticating again.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)
        conf = _log_settings()
        self._header = conf["REQUEST_ID_HEADER"]
        self._corr_header = conf["CORRELATION_ID_HEADER"]
        self._access = logging.getLogger(conf["ACCESS_LOGGER"]) if conf["ACCESS_LOG"] else None
        self._levels = conf["ACCESS_LEVELS"]
        self._ua_max = conf["USER_AGENT_MAX_LENGTH"]
        self._log_query = bool(conf["LOG_QUERY_STRING"])
        self._hook = conf["CONTEXT_HOOK"]
        self._num_proxies = conf["NUM_PROXIES"]

    def _begin(self, request: Any) -> dict[str, Any]:
        incoming = request.headers.get(self._header)
        if incoming and _REQUEST_ID_RE.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = uuid.uuid4().hex
        request.request_id = request_id
        ctx = {
            "request_id": request_id,
            "user_id": None,
            "method": request.method,
            "path": request.path,
        }
        if self._corr_header:
            corr = request.headers.get(self._corr_header)
            ctx["correlation_id"] = corr if corr and _REQUEST_ID_RE.fullmatch(corr) else None
        return ctx

    def _bind_hook(self, request: Any, ctx: dict[str, Any]) -> None:
        if self._hook is None:
            return
        extra = self._hook(request)
        if extra:
            if not isinstance(extra, Mapping):
                raise TypeError(
                    f"FASTCACHE_LOG_CONTEXT['CONTEXT_HOOK'] returned {type(extra).__name__}, "
                    "not a mapping"
                )
            for key, value in extra.items():
                ctx[key] = value

    def _level_for(self, status: int) -> int:
        levels = self._levels
        if status in levels:
            return levels[status]
        return levels.get(status // 100, logging.INFO)

    def _end(
        self, request: Any, ctx: dict[str, Any], response: Any, status: int, started: float
    ) -> None:
        if response is not None:
            response[self._header] = ctx["request_id"]
        if self._access is None:
            return
        level = self._level_for(status)
        if not self._access.isEnabledFor(level):
            return
        duration_ms = round((time.perf_counter() - started) * 1000.0, 3)
        from .limiter import get_ident

        meta = request.META
        client_ip = get_ident(request, self._num_proxies)
        if isinstance(client_ip, str) and len(client_ip) > _CLIENT_IP_MAX_LENGTH:
            client_ip = client_ip[:_CLIENT_IP_MAX_LENGTH]
        agent = meta.get("HTTP_USER_AGENT")
        if isinstance(agent, str) and len(agent) > self._ua_max:
            agent = agent[: self._ua_max]
        extra = {
            **{k: v for k, v in ctx.items() if not (isinstance(k, str) and k.startswith("_"))},
            "status": status,
            "duration_ms": duration_ms,
            "client_ip": client_ip,
            "user_agent": agent,
            "response_size": _response_size(response),
        }
        exc = ctx.get("_exception")
        if exc is not None:
            extra["exception"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        target = ctx["path"]
        if self._log_query:
            query = meta.get("QUERY_STRING", "")
            extra["query"] = _redact_query(query) if query else ""
            if query:
                target = f"{target}?{extra['query']}"
        # The traceback of an unhandled exception is logged once, by Django's own
        # "django.request" logger (with this request's context); the access line names
        # the exception without repeating it.
        self._access.log(level, '"%s %s" %s', ctx["method"], target, status, extra=extra)

    def process_exception(self, request: Any, exception: BaseException) -> None:
        ctx = _context.get()
        if ctx is not None and ctx.get("request_id") == getattr(request, "request_id", None):
            ctx["_exception"] = exception
        return None

    def _finish_user(self, request: Any, ctx: dict[str, Any]) -> None:
        if ctx["user_id"] is None:
            if _PENDING in ctx:
                _resolve_pending(ctx)
            if ctx["user_id"] is None and hasattr(request, "user"):
                ctx["user_id"] = _user_id(request.user)
        ctx.pop(_PENDING, None)

    def __call__(self, request: Any) -> Any:
        if self._is_async:
            return self.__acall__(request)
        started = time.perf_counter()
        ctx = self._begin(request)
        if hasattr(request, "user"):
            ctx["user_id"] = _user_id(request.user)
        if ctx["user_id"] is None:
            ctx[_PENDING] = request
        self._bind_hook(request, ctx)
        token = _context.set(ctx)
        response = None
        try:
            response = self.get_response(request)
        finally:
            self._finish_user(request, ctx)
            status = response.status_code if response is not None else 500
            try:
                self._end(request, ctx, response, status, started)
            finally:
                _context.reset(token)
        return response

    async def __acall__(self, request: Any) -> Any:
        started = time.perf_counter()
        ctx = self._begin(request)
        if hasattr(request, "auser"):
            ctx["user_id"] = await self._auser_id(request)
        if ctx["user_id"] is None:
            ctx[_PENDING] = request
        self._bind_hook(request, ctx)
        token = _context.set(ctx)
        response = None
        try:
            response = await self.get_response(request)
        finally:
            if ctx["user_id"] is None:
                _resolve_pending(ctx)
            if ctx["user_id"] is None and hasattr(request, "auser"):
                ctx["user_id"] = await self._auser_id(request)
            ctx.pop(_PENDING, None)
            status = response.status_code if response is not None else 500
            try:
                self._end(request, ctx, response, status, started)
            finally:
                _context.reset(token)
        return response

    @staticmethod
    async def _auser_id(request: Any) -> Any:
        user = await request.auser()
        return _user_id(user)


# --- management commands ------------------------------------------------------------------


@contextmanager
def command_context(name: str, **fields: Any):
    """The context of a management command (or any job outside a request): ``command`` and
    a ``run_id`` on every line written inside the block."""
    token = _context.set({"command": name, "run_id": uuid.uuid4().hex, **fields})
    try:
        yield
    finally:
        _context.reset(token)


def _install_command_context() -> None:
    """Wraps ``BaseCommand.execute`` (once) so every management command runs inside a
    ``command_context`` named after it, as ``manage.py`` and ``call_command`` name it."""
    from django.core.management.base import BaseCommand

    if getattr(BaseCommand.execute, "_fastcache_log", False):
        return
    original = BaseCommand.execute

    def execute(self: Any, *args: Any, **options: Any) -> Any:
        if _context.get() is not None and "command" in (_context.get() or {}):
            return original(self, *args, **options)  # a command calling another
        name = type(self).__module__.rsplit(".", 1)[-1]
        with command_context(name):
            return original(self, *args, **options)

    execute._fastcache_log = True  # type: ignore[attr-defined]
    execute.__wrapped__ = original  # type: ignore[attr-defined]
    BaseCommand.execute = execute  # type: ignore[method-assign]


def install_integrations() -> None:
    """Called from the app's ``ready()``: the management-command context and, when Celery
    is installed, the task context (each can be turned off in FASTCACHE_LOG_CONTEXT)."""
    conf = _log_settings()
    if conf["COMMAND_CONTEXT"]:
        _install_command_context()
    if conf["CELERY_CONTEXT"]:
        try:
            import celery  # noqa: F401
        except ImportError:
            return
        from .log_celery import connect

        connect()


# --- structured events --------------------------------------------------------------------


def log_event(
    event: str,
    data: Mapping[str, Any] | None = None,
    level: int | str = "INFO",
    logger: logging.Logger | str | None = None,
) -> None:
    """Write one structured line: message and ``event`` are the event name, ``data`` holds
    the given fields (nested, so they never clash with LogRecord attributes) and
    ``user_id`` is the current request's user (None outside a request)."""
    if isinstance(level, str):
        levelno = logging.getLevelName(level.upper())
        if not isinstance(levelno, int):
            raise ValueError(f"log_event: unknown level {level!r}")
    elif isinstance(level, int) and not isinstance(level, bool):
        levelno = level
    else:
        raise TypeError(f"log_event: level must be an int or a level name, not {level!r}")
    if logger is None or isinstance(logger, str):
        logger = logging.getLogger(logger or "django_fastcache.events")
    if not logger.isEnabledFor(levelno):
        return
    ctx = _context.get()
    if ctx and _PENDING in ctx:
        _resolve_pending(ctx)
    logger.log(
        levelno,
        event,
        extra={
            "event": event,
            "data": dict(data) if data is not None else {},
            "user_id": ctx.get("user_id") if ctx else None,
        },
        stacklevel=2,
    )
