#!/usr/bin/env bash
# Builds and tests the package on every Python and Django line that pyproject.toml declares,
# beside the full suite that `make test` runs on the default interpreter. Each entry gets its
# own virtualenv (.venv-<name>) and its own CMake build directory (build/<wheel tag>).
#
# An entry is "name python-version django-spec"; MATRIX_ONLY="name ..." runs only those. Interpreters are looked up as
# python<version> on PATH, then under pyenv's root; with CI=true a missing one fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

ENTRIES=(
  "py310-dj42 3.10 Django>=4.2,<4.3"
  "py312-dj52 3.12 Django>=5.2,<5.3"
  "py313-dj52 3.13 Django>=5.2,<5.3"
)
# The C++ core, the codec, the L1 store, the throttle paths (on every store, Django's
# RedisCache included, whose private client route differs by Django line, and the async
# set-ups) and Django's own cache suite (which covers single node, Cluster and Sentinel).
TESTS=${MATRIX_TESTS:-"tests/test_core_cpp.py tests/test_codec.py tests/test_cache_l1.py \
tests/test_throttling_fastpath.py tests/test_throttling_algorithms.py tests/test_throttling_drf.py \
tests/test_throttle_stores.py tests/test_throttle_async_setups.py \
tests/test_redis_client.py tests/test_django_suite.py tests/test_log_compat.py \
tests/test_orm_lazy_django_suite.py"}

find_python() {
  # pyenv's shims answer for every version name but run only the selected ones, so each
  # candidate is tried before it is taken.
  local v=$1 root p
  root=${PYENV_ROOT:-$HOME/.pyenv}
  for p in "$root"/versions/"$v".*/bin/python"$v" "$(command -v "python$v" || true)"; do
    if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys' >/dev/null 2>&1; then
      echo "$p"; return
    fi
  done
  return 1
}

failed=()
for entry in "${ENTRIES[@]}"; do
  read -r name version django <<<"$entry"
  if [ -n "${MATRIX_ONLY:-}" ] && [[ " $MATRIX_ONLY " != *" $name "* ]]; then continue; fi
  if ! py=$(find_python "$version"); then
    if [ "${CI:-}" = "true" ]; then
      echo "test-matrix: Python $version not found (CI=true: this is a failure)" >&2
      failed+=("$name (no python$version)")
    else
      echo "test-matrix: Python $version not found, $name left out"
    fi
    continue
  fi
  echo "=== $name: $py, $django"
  if ! make --no-print-directory install PYTHON="$py" VENV=".venv-$name" DJANGO_SPEC="$django"; then
    failed+=("$name (build)"); continue
  fi
  # shellcheck disable=SC2086
  if ! ".venv-$name/bin/python" -m pytest -q -p no:cacheprovider $TESTS; then
    failed+=("$name (tests)")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "test-matrix: failed: ${failed[*]}" >&2
  exit 1
fi
echo "test-matrix: every entry passed"
