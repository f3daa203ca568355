"""The ORM cache's scenarios (test_orm.py) once more with FASTCACHE_ORM_LAZY_FILTER on:
every filter() the scenarios make on a cached model is then deferred (lazy.py), and
every hit, miss and invalidation must stay the same."""

from __future__ import annotations

import pytest
from test_orm_pg import run_orm_scenarios


@pytest.mark.slow
def test_orm_scenarios_with_deferred_filters():
    run_orm_scenarios(ORM_TEST_LAZY="1")
