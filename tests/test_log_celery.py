"""Celery tasks get a log context (task id and name), and a task started during a request
carries the request's ``request_id``, ``correlation_id`` and ``user_id`` to a real worker,
through a message header; the worker runs on a Redis broker the test starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.http import JsonResponse
from django.test import Client, override_settings
from django.urls import path

try:
    import celery  # noqa: F401
except ImportError:  # the "celery" extra, in the test extras: CI must have it
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("celery is not installed (it is in the test extras)", allow_module_level=True)
import celery_log_app  # noqa: E402
from django_fastcache.log import bind_context, get_request_context  # noqa: E402
from django_fastcache.log_celery import HEADER  # noqa: E402
from redis_servers import RedisServer, wait_until  # noqa: E402

TESTS = Path(__file__).resolve().parent


def start_view(request):
    request.user = SimpleNamespace(pk=77, is_authenticated=True)
    result = celery_log_app.report.delay("from a request")
    return JsonResponse({"task_id": result.id})


urlpatterns = [path("start/", start_view)]


@pytest.fixture(scope="module")
def worker():
    with RedisServer() as server:
        env = {**os.environ, "FASTCACHE_TEST_BROKER": server.url,
               "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_log_app", "worker", "--pool=solo",
             "--concurrency=1", "--without-heartbeat", "--without-gossip", "--without-mingle",
             "--loglevel=WARNING", "-Q", celery_log_app.QUEUE],
            cwd=TESTS, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        app = celery_log_app.app
        old = (app.conf.broker_url, app.conf.result_backend)
        app.conf.broker_url = f"{server.url}/0"
        app.conf.result_backend = f"{server.url}/1"
        try:
            def ready():
                if proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read().decode(errors="replace"))
                return bool(app.control.ping(timeout=0.5))

            wait_until(ready, 60, "the Celery worker to answer a ping")
            yield app
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()
            app.conf.broker_url, app.conf.result_backend = old


@override_settings(ROOT_URLCONF=__name__,
                   MIDDLEWARE=["django_fastcache.log.RequestContextMiddleware"])
def test_a_task_started_in_a_request_carries_its_ids(worker):
    response = Client().get("/start/", headers={"X-Request-ID": "req-celery-1",
                                                 "X-Correlation-ID": "corr-9"})
    task_id = response.json()["task_id"]
    out = celery_log_app.report.AsyncResult(task_id).get(timeout=60)
    expected = {"request_id": "req-celery-1", "correlation_id": "corr-9", "user_id": 77,
                "task_id": task_id, "task_name": "fastcache.report"}
    assert out["context"] == expected
    line = out["line"]
    assert line["message"] == "in task from a request"
    assert {k: line[k] for k in expected} == expected


def test_a_task_started_outside_a_request_has_only_its_own_fields(worker):
    result = celery_log_app.report.delay("plain")
    out = result.get(timeout=60)
    assert out["context"] == {"task_id": result.id, "task_name": "fastcache.report"}


def test_contexts_do_not_leak_between_tasks_and_travel_down_chains(worker):
    with bind_context(request_id="outer", user_id=5):
        parent = celery_log_app.chain_parent.delay()
    assert get_request_context() == {}
    out = parent.get(timeout=60)
    assert out["context"] == {"request_id": "outer", "user_id": 5, "task_id": parent.id,
                              "task_name": "fastcache.chain_parent"}
    child = celery_log_app.report.AsyncResult(out["child_id"]).get(timeout=60)
    assert child["context"] == {"request_id": "outer", "user_id": 5,
                                "task_id": out["child_id"], "task_name": "fastcache.report"}
    # The next task run by the same worker process starts clean.
    assert celery_log_app.report.delay("after").get(timeout=60)["context"]["task_name"] == (
        "fastcache.report"
    )
    assert "request_id" not in celery_log_app.report.delay("after").get(timeout=60)["context"]


def test_the_header_is_only_added_when_there_is_something_to_carry():
    from django_fastcache.log_celery import _before_publish

    headers: dict = {}
    _before_publish(headers=headers)
    assert headers == {}
    with bind_context(request_id="r", user_id=None, other="x"):
        _before_publish(headers=headers)
    assert headers == {HEADER: {"request_id": "r"}}
    _before_publish(headers=None)  # protocol 1 messages have none: nothing to do
