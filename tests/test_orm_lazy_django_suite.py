"""Django's own ORM tests (``tests/runtests.py`` from the installed Django's source) with
FASTCACHE_ORM_LAZY_FILTER installed into the process must end exactly as they do
without it: the same tests run, the same ones fail (none, on the versions tried).

Both runs use django_lazy_settings.py (every model with a profile so that its filters
can be deferred, nothing cached); they run side by side, one per core, on SQLite and
then on a PostgreSQL started here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import django_suite
import pytest
from test_orm_pg import PostgresServer

pytestmark = pytest.mark.slow

# ORM-heavy apps of Django's test suite: about 4,300 tests, ~35 s a run on one core.
LABELS = """
aggregation aggregation_regress annotations backends basic bulk_create composite_pk
custom_columns custom_lookups custom_managers custom_methods custom_pk dates datetimes
db_functions defer defer_regress delete delete_regress distinct_on_fields expressions
expressions_case expressions_window extra_regress filtered_relation foreign_object
from_db_value generic_relations generic_relations_regress get_earliest_or_latest
get_or_create known_related_objects lookup m2m_and_m2o m2m_intermediary m2m_multiple
m2m_recursive m2m_regress m2m_through m2m_through_regress m2o_recursive managers_regress
many_to_many many_to_one many_to_one_null model_fields model_inheritance
model_inheritance_regress model_regress multiple_database mutually_referential
nested_foreign_keys null_fk null_fk_ordering null_queries one_to_one or_lookups
order_with_respect_to ordering pagination prefetch_related proxy_models queries
queryset_pickle raw_query reverse_lookup select_for_update select_related
select_related_onetoone select_related_regress string_lookup update update_only_fields
""".split()

TESTS_DIR = Path(__file__).resolve().parent


def _suite() -> Path | None:
    try:
        return django_suite.ensure_all()
    except (OSError, subprocess.SubprocessError, django_suite.tarfile.TarError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Django's test suite could not be fetched: {exc}", pytrace=False)
        pytest.skip(f"Django's test suite could not be fetched: {exc}")
    return None


def _start(suite: Path, labels: list, mode: str, out: Path, extra: dict) -> subprocess.Popen:
    env = {**os.environ, "FASTCACHE_SUITE_LAZY": mode, "FASTCACHE_SUITE_RESULT": str(out),
           "PYTHONPATH": str(TESTS_DIR), **extra}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.Popen(
        [sys.executable, "runtests.py", "--settings=django_lazy_settings", "--parallel=1",
         "--noinput", *labels],
        cwd=suite, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_django_orm_suite_is_unchanged_by_the_lazy_filter(tmp_path):
    _compare(tmp_path, {})


def test_django_orm_suite_is_unchanged_by_the_lazy_filter_on_postgresql(tmp_path):
    with PostgresServer() as server:
        _compare(tmp_path, {"FASTCACHE_SUITE_PG_PORT": str(server.port)})


def _compare(tmp_path, extra: dict) -> None:
    suite = _suite()
    labels = [name for name in LABELS if (suite / name).is_dir()]  # older Djangos lack some
    runs = {mode: (tmp_path / f"{mode}.json") for mode in ("0", "1")}
    procs = {mode: _start(suite, labels, mode, out, extra) for mode, out in runs.items()}
    outputs = {mode: p.communicate(timeout=600)[0] for mode, p in procs.items()}
    results = {}
    for mode, out in runs.items():
        assert out.exists(), f"runtests.py (FASTCACHE_SUITE_LAZY={mode}) wrote no result:\n" \
                             f"{outputs[mode][-4000:]}"
        results[mode] = json.loads(out.read_text())
    base, lazy = results["0"], results["1"]
    assert base["run"] > 3000 and len(base["bad"]) < 10, outputs["0"][-4000:]
    assert lazy["run"] == base["run"]
    assert lazy["skipped"] == base["skipped"]
    new = {t: lazy["tracebacks"].get(t, "") for t in set(lazy["bad"]) - set(base["bad"])}
    assert not new, "failing only with the lazy filter:\n" + "\n".join(
        f"{t}\n{tb}" for t, tb in sorted(new.items()))
    assert lazy["bad"] == base["bad"]
    # The lazy filter did defer filters (a filter is built at once the first time it is
    # seen, lazy.py; deferred when seen again), so the comparison means something.
    assert lazy["deferred"] > 500, lazy
