# The two commands the README promises: `make test` and `make demo`. Everything they need is
# installed here: a virtualenv under the repo, packages from PyPI, redis-server from Debian.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SANITIZE ?= 0
PYTEST_ARGS ?=
# A pip requirement that replaces the Django version pyproject allows (make test-matrix).
DJANGO_SPEC ?=

ifeq ($(SANITIZE),1)
BUILD_FLAGS := -Cbuild-dir=build/asan -Ccmake.define.FASTCACHE_SANITIZE=ON -Ccmake.build-type=RelWithDebInfo
# Python itself is not instrumented, so the ASan runtime is preloaded; CPython's own
# allocations at exit are not ours to report, hence no leak detection.
RUN_ENV := LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
           ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
           FASTCACHE_SANITIZED=1
else
BUILD_FLAGS :=
RUN_ENV :=
endif

.PHONY: all venv install lint test test-matrix demo bench redis-server postgresql clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Build requirements (for incremental --no-build-isolation builds), then the runtime, test and
# benchmark requirements, all read from pyproject.toml so each is written down once.
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -c 'import tomllib' 2>/dev/null || $(BIN)/pip install --quiet tomli  # Python 3.10
	$(BIN)/python -c 'import sys; tomllib = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli"); \
	  d = tomllib.load(open("pyproject.toml", "rb")); \
	  o = d["project"]["optional-dependencies"]; \
	  print("\n".join(d["build-system"]["requires"] + d["project"]["dependencies"] + o["test"] + o["bench"] + o["lint"]))' \
	  > $(VENV)/requirements.txt
	$(BIN)/pip install --quiet -r $(VENV)/requirements.txt
	$(if $(DJANGO_SPEC),$(BIN)/pip install --quiet '$(DJANGO_SPEC)')
	touch $@

venv: $(VENV)/.deps

# Incremental: the CMake build directory under build/ is kept between runs.
install: $(VENV)/.deps
	$(BIN)/pip install --quiet --no-build-isolation --no-deps $(BUILD_FLAGS) .

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) || \
	  { echo "could not install redis-server"; exit 1; }; }

# Findings fail the run: ruff on the Python, clang-format on the C++ (both pinned in the
# `lint` extra, so every machine formats alike).
lint: $(VENV)/.deps
	$(BIN)/ruff check python tests benchmarks examples scripts
	find src tests/cpp \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' \) -print0 | \
	  xargs -0 $(BIN)/clang-format --dry-run --Werror

# The ORM cache's tests start their own PostgreSQL (initdb/pg_ctl) on a free port.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "initdb not found: installing postgresql with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) || \
	  { echo "could not install postgresql"; exit 1; }; }

test: lint install redis-server postgresql
	$(RUN_ENV) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The declared Pythons (3.10, 3.12, 3.13) and Django 4.2 LTS, each in its own venv; CI runs it
# after `make test` (which covers 3.11 and the newest Django in full).
test-matrix: redis-server
	scripts/test-matrix.sh

demo: install
	$(BIN)/python examples/demo.py

bench: install redis-server
	$(BIN)/python benchmarks/bench_cache.py

clean:
	rm -rf build $(VENV) .venv-* python/django_fastcache/_core*.so
