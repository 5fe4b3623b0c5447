#!/usr/bin/env bash
# One command on a fresh machine: install and start what the tests need (scripts/services.sh:
# clickhouse-server, rabbitmq-server, zookeeper, chromium, docker-compose, the C toolchain, all from
# Debian), the Python package with its test extras in .venv, then run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
MSGTRACE_EXTRAS=test bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
