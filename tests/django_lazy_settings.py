"""Settings for Django's own ``tests/runtests.py`` (``--settings=django_lazy_settings``)
with FASTCACHE_ORM_LAZY_FILTER installed into the process: test_orm_lazy_django_suite.py.

runtests.py builds its own INSTALLED_APPS, so our app's ``ready()`` never runs: the
runner below installs the lazy filter (lazy.install) alone, before the first test. Every model
has a profile (``*.*``: a filter() is deferred only on a cached model) while
CACHEOPS_ENABLED is False: nothing is read from or stored in a cache, only the lazy
filter changes what Django does.

FASTCACHE_SUITE_LAZY: "0" installs nothing (the baseline), "1" the lazy filter as it
ships (a filter seen for the first time is built at once, lazy.py), "always" defers
every filter it can, even the first time (Django's errors then come later: those tests
are expected to differ; any other difference is one "1" has as well, on a repeat).
FASTCACHE_SUITE_PG_PORT: run on the PostgreSQL server listening there instead of SQLite
(each mode in databases of its own, so that two runs may share the server).
FASTCACHE_SUITE_RESULT: a file the outcome of every test is written to (JSON).
"""

import json
import os

from django.test.runner import DiscoverRunner
from django.test.utils import iter_test_cases
from test_sqlite import DATABASES, DEFAULT_AUTO_FIELD, PASSWORD_HASHERS, SECRET_KEY, USE_TZ

MODE = os.environ.get("FASTCACHE_SUITE_LAZY", "1")
PG_PORT = os.environ.get("FASTCACHE_SUITE_PG_PORT")
if PG_PORT:  # a PostgreSQL started by the test (test_orm_pg.PostgresServer)
    DATABASES = {alias: {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1",
                         "PORT": PG_PORT, "USER": "postgres", "NAME": f"{alias}_{MODE}"}
                 for alias in ("default", "other")}

__all__ = ["DATABASES", "DEFAULT_AUTO_FIELD", "PASSWORD_HASHERS", "SECRET_KEY", "USE_TZ"]

CACHEOPS = {"*.*": {"ops": "all", "timeout": 60}}
CACHEOPS_ENABLED = False
FASTCACHE_ORM_LAZY_FILTER = MODE != "0"
TEST_RUNNER = "django_lazy_settings.Runner"
COUNTS = {"deferred": 0, "built": 0}


class Runner(DiscoverRunner):
    def setup_test_environment(self, **kwargs):
        super().setup_test_environment(**kwargs)
        if MODE == "0":
            return
        from django_fastcache.orm import lazy, query

        # The lazy filter alone: query.install() would also add Manager methods and
        # post_save/post_delete receivers (which turn Django's fast deletes off).
        lazy.install(query._profile)
        known = lazy.shape_known

        def shape_known(fp, a):
            # How many filter() calls were deferred and how many built at once.
            got = True if MODE == "always" else known(fp, a)
            COUNTS["deferred" if got else "built"] += 1
            return got

        lazy.shape_known = shape_known

    def run_suite(self, suite, **kwargs):
        self.test_ids = [test.id() for test in iter_test_cases(suite)]  # run() empties it
        return super().run_suite(suite, **kwargs)

    def suite_result(self, suite, result, **kwargs):
        path = os.environ.get("FASTCACHE_SUITE_RESULT")
        if path:
            outcome = {}
            for name in ("errors", "failures", "unexpectedSuccesses"):
                for item in getattr(result, name):
                    test = item[0] if isinstance(item, tuple) else item
                    outcome[test.id()] = name
            per_label = {}  # app label: [tests, skipped, failed]
            skipped = {t.id() for t, _ in result.skipped}
            for test_id in self.test_ids:
                row = per_label.setdefault(test_id.split(".")[0], [0, 0, 0])
                row[0] += 1
                row[1] += test_id in skipped
                row[2] += test_id in outcome
            with open(path, "w") as f:
                json.dump({"run": result.testsRun, "skipped": len(result.skipped), **COUNTS,
                           "bad": outcome, "per_label": per_label,
                           "tracebacks": {t.id(): tb for t, tb in
                                          result.errors + result.failures}}, f, indent=1)
        return super().suite_result(suite, result, **kwargs)
