"""A Celery app for tests/test_log_celery.py: its tasks report the log context they run
with and a line JsonFormatter writes inside them. The test process imports it to send
tasks; a worker subprocess imports it (and sets Django up) to run them."""

from __future__ import annotations

import json
import logging
import os

import django
from celery import Celery
from django.conf import settings

if not settings.configured:  # the worker process
    settings.configure(
        SECRET_KEY="django-fastcache-celery-tests-not-secret",
        INSTALLED_APPS=["django_fastcache"],
        CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache"}},
    )
    django.setup()  # the app's ready() connects the Celery context

from django_fastcache.log import JsonFormatter, get_request_context  # noqa: E402

BROKER = os.environ.get("FASTCACHE_TEST_BROKER", "redis://127.0.0.1:1")
QUEUE = "fastcache-log-test"

app = Celery("celery_log_app", broker=f"{BROKER}/0", backend=f"{BROKER}/1")
app.conf.update(
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=60,
)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@app.task(name="fastcache.report")
def report(tag: str) -> dict:
    handler = Capture()
    logger = logging.getLogger("celery_log_app.task")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("in task %s", tag)
    finally:
        logger.removeHandler(handler)
    return {"context": get_request_context(), "line": json.loads(handler.lines[0])}


@app.task(name="fastcache.chain_parent")
def chain_parent() -> dict:
    # A task started from a task carries the parent's request fields along.
    child = report.delay("child")
    return {"child_id": child.id, "context": get_request_context()}
