#!/usr/bin/env bash
# Installs (Debian packages) and starts what the test suite needs, so that a fresh machine passes
# the tests with one command. Idempotent: only what is missing is installed, `apt-get update` runs
# once, and only when something must be installed.
#
#   clickhouse-server   ClickHouse 18.16 (the oldest server msgtrace supports); tests start their own
#   rabbitmq-server     RabbitMQ (tests use the running one, or start their own when none answers)
#   zookeeper           replicated tables of the ClickHouse cluster test (needs Java: default-jre-headless)
#   chromium            opens the HTML reports headless in the report tests
#   docker-compose      `docker-compose config` checks deploy/docker-compose.yml (no engine needed)
#   systemd             `systemd-analyze verify` checks deploy/systemd/ units
#   gcc, python3-dev    build the collector's C decoder (collectors/_fastjson.c)
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have clickhouse-server || need+=(clickhouse-server)
have rabbitmq-server || need+=(rabbitmq-server)
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || need+=(zookeeper)
have java || need+=(default-jre-headless)
have chromium || need+=(chromium)
have docker-compose || need+=(docker-compose)
have systemd-analyze || need+=(systemd)
have "${CC:-cc}" || need+=(gcc)
PY=${PYTHON:-python3}
if ! "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
  need+=(python3-dev)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]} ..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# RabbitMQ: the tests use the server at MSGTRACE_TEST_AMQP_URL (default 127.0.0.1:5672) in a vhost
# of their own; start the machine's server when none answers.
amqp_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if [ -z "${MSGTRACE_TEST_AMQP_URL:-}" ] && ! amqp_up; then
  echo "starting rabbitmq-server ..." >&2
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 120); do amqp_up && break; sleep 0.5; done
  amqp_up || echo "warning: rabbitmq-server did not come up on 127.0.0.1:5672" >&2
fi
