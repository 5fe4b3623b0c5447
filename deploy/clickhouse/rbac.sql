-- msgtrace's ClickHouse users with least privilege, for servers with SQL access control
-- (ClickHouse >= 20.4; the wildcard grant on expected_* needs >= 24.10, see below). For 18.16 use
-- users.d/msgtrace-users.xml instead. Run as an admin after (or before) `msgtrace db init`:
-- grants name tables, which need not exist yet.
--
-- __COLLECTOR_PASSWORD__, __CLI_PASSWORD__ and __GRAFANA_PASSWORD__ are replaced by
-- initdb/10-msgtrace-users.sh from the environment (never stored in a file); by hand, replace them
-- yourself in a copy you do not keep. On a cluster add ON CLUSTER <name> after each user or grant
-- name list (e.g. GRANT ON CLUSTER prod INSERT ON ...), or run this on every node.

-- The collector (msgtrace collect): writes events and quarantined records, nothing else.
CREATE USER IF NOT EXISTS msgtrace_collector IDENTIFIED WITH sha256_password BY '__COLLECTOR_PASSWORD__';
GRANT INSERT ON msgtrace.trace_events TO msgtrace_collector;
GRANT INSERT ON msgtrace.quarantine TO msgtrace_collector;
-- Optional: the duplicate count of a redelivered batch reads two key columns. Without this grant the
-- collector still stores everything exactly once, but its `duplicates` figure stays 0 and it logs
-- "duplicate lookup failed" once per redelivered batch.
GRANT SELECT(msg_id, event_id) ON msgtrace.trace_events TO msgtrace_collector;

-- The CLI (msgtrace reconcile / incident / trace-msg, the nightly job): reads everything, writes
-- the run history and the verdicts, and stages a run's candidate and expected ids in tables named
-- expected_<run id> that it creates and drops itself.
CREATE USER IF NOT EXISTS msgtrace_cli IDENTIFIED WITH sha256_password BY '__CLI_PASSWORD__';
GRANT SELECT ON msgtrace.* TO msgtrace_cli;
GRANT INSERT ON msgtrace.reconcile_runs TO msgtrace_cli;
GRANT INSERT ON msgtrace.verdicts TO msgtrace_cli;
-- ClickHouse >= 24.10 (wildcard grants). Older servers: GRANT CREATE TABLE, DROP TABLE, INSERT ON msgtrace.*
GRANT CREATE TABLE, DROP TABLE, INSERT ON msgtrace.expected_* TO msgtrace_cli;

-- Grafana (deploy/grafana): reads.
CREATE USER IF NOT EXISTS msgtrace_grafana IDENTIFIED WITH sha256_password BY '__GRAFANA_PASSWORD__';
GRANT SELECT ON msgtrace.* TO msgtrace_grafana;
