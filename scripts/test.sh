#!/usr/bin/env bash
# One command on a fresh machine: install and start what the tests need (scripts/services.sh:
# clickhouse-server, rabbitmq-server, zookeeper, chromium, docker-compose, the C toolchain, all from
# Debian), the Python package with its test extras in .venv, then run the test suite.
# Extra arguments go to pytest. After the tests: ruff (config in pyproject.toml) and mypy --strict on
# tracer/ and collectors/; MSGTRACE_SKIP_LINT=1 skips them on a developer machine (never under CI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
MSGTRACE_EXTRAS=test bash scripts/setup.sh
status=0
fail() { [ "$status" != 0 ] || status=1; }  # keep pytest's own code when it failed first
.venv/bin/python -m pytest "$@" || status=$?
if [ "${MSGTRACE_SKIP_LINT:-}" != 1 ] || [ "${CI:-}" = true ]; then
  echo "ruff check ..." >&2
  .venv/bin/ruff check . || fail
  echo "mypy (strict: tracer/, collectors/) ..." >&2
  .venv/bin/mypy || fail
fi
exit "$status"
