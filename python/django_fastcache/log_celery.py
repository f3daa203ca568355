"""Log context for Celery tasks: each task runs with ``task_id`` and ``task_name`` in the
context that ``JsonFormatter`` writes, and a task started while a request (or a command,
or another task) runs carries that context's ``request_id``, ``correlation_id`` and
``user_id`` to the worker in a message header.

``django_fastcache`` connects it from its app's ``ready()`` when Celery is installed; a
worker that does not load Django apps calls :func:`connect` itself.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals

from .log import _context, get_request_context

__all__ = ["HEADER", "PROPAGATED", "connect", "disconnect"]

#: The message header that carries the context to the worker.
HEADER = "fastcache_log"
#: The context fields a task inherits from whoever started it.
PROPAGATED = ("request_id", "correlation_id", "user_id")

_lock = threading.Lock()
_connected = False
# Context tokens of the tasks running in this process, by task id (prerun and postrun
# run on the thread that runs the task).
_tokens: dict[str, Any] = {}


def _before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None:
        return
    ctx = get_request_context()
    carried = {k: ctx[k] for k in PROPAGATED if ctx.get(k) is not None}
    if carried:
        headers[HEADER] = carried


def _incoming(task: Any) -> dict[str, Any]:
    request = getattr(task, "request", None)
    carried = getattr(request, HEADER, None)
    if carried is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            carried = headers.get(HEADER)
    if not isinstance(carried, dict):
        return {}
    return {k: carried[k] for k in PROPAGATED if k in carried}


def _prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None:
        return
    ctx = {**_incoming(task), "task_id": task_id, "task_name": getattr(task, "name", None)}
    _tokens[task_id] = _context.set(ctx)


def _postrun(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        try:
            _context.reset(token)
        except ValueError:  # set in another context (an unusual pool): drop it there
            _context.set(None)


def connect() -> None:
    """Connects the signal handlers (once per process)."""
    global _connected
    with _lock:
        if _connected:
            return
        signals.before_task_publish.connect(_before_publish, weak=False)
        signals.task_prerun.connect(_prerun, weak=False)
        signals.task_postrun.connect(_postrun, weak=False)
        _connected = True


def disconnect() -> None:
    global _connected
    with _lock:
        signals.before_task_publish.disconnect(_before_publish)
        signals.task_prerun.disconnect(_prerun)
        signals.task_postrun.disconnect(_postrun)
        _connected = False
