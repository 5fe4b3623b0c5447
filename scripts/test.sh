#!/usr/bin/env bash
# One command on a fresh machine: install what the tests need (clickhouse-server from
# Debian, the Python package with test extras) and run the test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
have_ch() { command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/sbin/clickhouse-server ]; }
if ! have_ch; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing clickhouse-server (Debian package) ..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clickhouse-server >/dev/null
fi
MSGTRACE_EXTRAS=test bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
