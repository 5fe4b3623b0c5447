#!/bin/bash
# Runs once, at the first start of the official clickhouse-server image (/docker-entrypoint-initdb.d):
# creates msgtrace's least-privilege users from /etc/msgtrace/rbac.sql. The passwords come from the
# container's environment (MSGTRACE_*_PASSWORD, set from deploy/.env) and reach clickhouse-client on
# its standard input, never on a command line (ps) or in a file.
set -euo pipefail
for v in MSGTRACE_COLLECTOR_PASSWORD MSGTRACE_CLI_PASSWORD MSGTRACE_GRAFANA_PASSWORD; do
  if [ -z "${!v:-}" ]; then echo "10-msgtrace-users.sh: $v is not set" >&2; exit 1; fi
done
quote() { local s=${1//\\/\\\\}; printf '%s' "${s//\'/\\\'}"; }   # inside '...' in SQL
sql=$(cat /etc/msgtrace/rbac.sql)
sql=${sql//__COLLECTOR_PASSWORD__/$(quote "$MSGTRACE_COLLECTOR_PASSWORD")}
sql=${sql//__CLI_PASSWORD__/$(quote "$MSGTRACE_CLI_PASSWORD")}
sql=${sql//__GRAFANA_PASSWORD__/$(quote "$MSGTRACE_GRAFANA_PASSWORD")}
# the admin's name and password: clickhouse-client reads CLICKHOUSE_USER / CLICKHOUSE_PASSWORD itself
printf '%s\n' "$sql" | clickhouse client --multiquery
echo "10-msgtrace-users.sh: msgtrace_collector, msgtrace_cli, msgtrace_grafana ready"
