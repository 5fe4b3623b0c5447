"""deploy/: the compose file (docker-compose config), the Kubernetes manifests (kubernetes-validate),
the systemd units (systemd-analyze verify), the image recipe, the nightly script, the Grafana
dashboard's SQL (run on chDB), and the least-privilege ClickHouse users on the real 18.16 server.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import unavailable

from tests.test_reconcile import HOUR, T0, scenario_events
from tracer.errors import QueryError, StoreUnavailable
from tracer.localsvc import ClickHouseServer, ServiceError
from tracer.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SECRETS = ("KAFKA_CLUSTER_ID", "CLICKHOUSE_ADMIN_PASSWORD", "MSGTRACE_COLLECTOR_PASSWORD", "MSGTRACE_CLI_PASSWORD",
           "MSGTRACE_GRAFANA_PASSWORD", "GRAFANA_ADMIN_PASSWORD")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        unavailable(name, f"{name} is not installed")
    return path  # type: ignore[return-value]


def _env_file(tmp_path: Path, **values: str) -> Path:
    text = (DEPLOY / "msgtrace.env.example").read_text()
    for k, v in values.items():
        text = re.sub(rf"(?m)^{k}=.*$", f"{k}={v}", text)
    p = tmp_path / "test.env"
    p.write_text(text)
    return p


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([_tool("docker-compose"), "--env-file", str(env_file), "-f", str(DEPLOY / "docker-compose.yml"),
                           "--project-directory", str(DEPLOY), "config", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_compose_file_passes_docker_compose_config(tmp_path):
    import yaml

    env = _env_file(tmp_path, **{k: f"test-{k.lower()}" for k in SECRETS})
    r = _compose(env)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    svc = cfg["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "audit-topic", "clickhouse", "db-init", "collector-1", "collector-2",
            "reconcile"} <= set(svc)
    for k in ("kafka-1", "kafka-2", "kafka-3"):
        e = svc[k]["environment"]
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller" and str(e["KAFKA_MIN_INSYNC_REPLICAS"]) == "2"
        assert "healthcheck" in svc[k]
    topic = svc["audit-topic"]["command"]
    assert topic[topic.index("--replication-factor") + 1] == "3" and "min.insync.replicas=2" in topic
    for c in ("collector-1", "collector-2"):
        assert svc[c]["command"][0] == "collect" and "healthcheck" in svc[c]
        assert svc[c]["environment"]["MSGTRACE_STORE"].startswith("clickhouse://msgtrace_collector@")
    assert svc["reconcile"]["entrypoint"] == ["msgtrace-nightly"]
    assert svc["reconcile"]["environment"]["MSGTRACE_STORE"].startswith("clickhouse://msgtrace_cli@")
    # the secrets come from the env file, none is written in the compose file itself
    raw = (DEPLOY / "docker-compose.yml").read_text()
    for k in SECRETS:
        assert f"test-{k.lower()}" not in raw
    for line in raw.splitlines():
        m = re.match(r"\s*[A-Z_]*(PASSWORD|CLUSTER_ID)[A-Z_]*:\s*(.+)$", line)
        if m:
            assert m.group(2).startswith("${"), line


def test_compose_without_the_secrets_fails_naming_them(tmp_path):
    r = _compose(DEPLOY / "msgtrace.env.example", "-q")
    assert r.returncode != 0
    assert "set KAFKA_CLUSTER_ID in .env" in r.stderr or "in .env" in r.stderr


def test_kubernetes_manifests_validate():
    files = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    assert len(files) >= 5
    r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", *files], capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0 and "No module named" in r.stderr:
        exe = Path(sys.executable).with_name("kubernetes-validate")
        r = subprocess.run([str(exe), "--strict", *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (DEPLOY / "kubernetes" / "collector-deployment.yaml").read_text()
    assert "runAsNonRoot: true" in text and "/healthz" in text and "MSGTRACE_STORE_PASSWORD_FILE" in text


def test_systemd_units_verify(tmp_path):
    tool = _tool("systemd-analyze")
    for unit in (DEPLOY / "systemd").iterdir():
        # the units name /opt/msgtrace/bin/msgtrace, absent here: verify them against this venv's
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/msgtrace/bin/msgtrace",
                                                                    str(Path(sys.executable).with_name("msgtrace"))))
    units = sorted(str(p) for p in tmp_path.iterdir())
    r = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True, timeout=120)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "msgtrace" in ln and "User" not in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_dockerfile_is_slim_non_root_and_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM (\S+)", text)
    assert len(stages) == 2 and "slim" in re.search(r"ARG PYTHON=(\S+)", text).group(1)
    assert re.search(r"(?m)^USER 10001", text)
    assert not re.search(r"(?im)^ENV .*(PASSWORD|SECRET)=", text)
    for src in re.findall(r"(?m)^COPY (?!--from)(\S+)", text):
        assert (ROOT / src).exists(), src
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert "!tracer/**" in ignore and "!deploy/docker/**" in ignore


def test_nightly_script_runs_a_reconcile_and_records_its_exit(tmp_path):
    """msgtrace-nightly --now on a chDB store with yesterday's events: report files and status."""
    from tracer.events import Event

    store = f"chdb://{tmp_path / 'store'}"
    day = 86_400_000_000
    t = (int(time.time()) // 86400) * 86400 * 1_000_000 - day + 3_600_000_000  # yesterday 01:00 UTC
    with Store(store) as s:
        s.init_schema()
        s.insert_events([Event(msg_id="n-1", stage="sent", ts_us=t, topic="t", service="p"),
                         Event(msg_id="n-1", stage="broker_acked", ts_us=t + 1, topic="t", partition=0, offset=0,
                               service="p")])
    reports = tmp_path / "reports"
    env = dict(os.environ, MSGTRACE_STORE=store, MSGTRACE_REPORT_DIR=str(reports), MSGTRACE_TZ="UTC",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(["sh", str(DEPLOY / "docker" / "nightly.sh"), "--now"], capture_output=True, text=True,
                       env=env, timeout=300)
    yday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    status = (reports / ".last-run").read_text()
    assert f"day={yday}" in status and re.search(r"exit=[01]\b", status), (status, r.stderr)
    assert r.returncode in (0, 1)
    doc = json.loads((reports / f"reconcile-{yday}.json").read_text())
    assert doc["total"] >= 1
    assert (reports / f"reconcile-{yday}.html").stat().st_size > 0
    bad = subprocess.run(["sh", str(DEPLOY / "docker" / "nightly.sh")], capture_output=True, text=True,
                         env={**env, "MSGTRACE_RECONCILE_AT": "25h"}, timeout=30)
    assert bad.returncode == 2 and "HH:MM" in bad.stderr


def test_grafana_dashboard_queries_run_on_chdb(chdb_url):
    dash = json.loads((DEPLOY / "grafana" / "msgtrace-dashboard.json").read_text())
    with Store(chdb_url) as s:
        s.init_schema()
        s.insert_events(scenario_events().events)
    r = _cli("reconcile", "--from", "2026-11-21T00:00:00Z", "--to", "2026-11-21T01:00:00Z", "--store", chdb_url)
    assert r.returncode == 1, r.stderr  # a run with losses, written to reconcile_runs and verdicts
    with Store(chdb_url) as s:
        seen = 0
        for panel in dash["panels"]:
            for target in panel["targets"]:
                sql = (target["rawSql"].replace("$__fromTime", f"toDateTime({T0 // 1_000_000 - 86400})")
                       .replace("$__toTime", f"toDateTime({(T0 + 2 * HOUR) // 1_000_000})"))
                assert "$__" not in sql and "{db" not in sql
                rows = s.query(sql.replace("msgtrace.", "{db:Identifier}."))
                if panel["title"] != "Quarantined audit records per hour":
                    assert rows, panel["title"]
                seen += 1
    assert seen == len(dash["panels"]) >= 5


# --- least-privilege users on the real 18.16 server -------------------------------------------

PASSWORDS = {"COLLECTOR": "c0ll'ect\"or pw", "CLI": "cli-pw-" + uuid.uuid4().hex[:6], "GRAFANA": "graf pw"}


def _deploy_users_xml() -> tuple[str, str]:
    """The inner XML of <profiles> and <users> of deploy/clickhouse/users.d, hashes filled in."""
    text = (DEPLOY / "clickhouse" / "users.d" / "msgtrace-users.xml").read_text()
    for who, pw in PASSWORDS.items():
        text = text.replace(f"__{who}_PASSWORD_SHA256__", hashlib.sha256(pw.encode()).hexdigest())
    assert "__" not in re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    root = ET.fromstring(text)

    def inner(tag: str) -> str:
        return "".join(ET.tostring(child, encoding="unicode") for child in root.find(tag))

    return inner("profiles"), inner("users")


@pytest.fixture(scope="module")
def users_server():
    profiles, users = _deploy_users_xml()
    try:
        s = ClickHouseServer(extra_profiles=profiles, extra_users=users).start()
    except (ServiceError, TimeoutError, OSError) as e:
        unavailable("clickhouse-server", e)
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(s.workdir, ignore_errors=True)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    from tests.test_cluster import secret_free

    argv, secret = secret_free(args)  # the password goes by the environment, never in `ps`
    return subprocess.run([sys.executable, "-m", "tracer", *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **secret})


def test_least_privilege_users_work_on_1816(users_server, kafka_bootstrap, tmp_path):
    from collectors.testing import create_topic, produce_events, produce_records
    from tracer.events import record_headers

    admin = users_server.url("msgtrace")
    url = {who.lower(): users_server.url("msgtrace", user=f"msgtrace_{who.lower()}", password=pw)
           for who, pw in PASSWORDS.items()}
    r = _cli("db", "init", "--store", admin)
    assert r.returncode == 0, r.stderr
    with Store(admin) as a:  # another database the msgtrace users must not see
        a.command("CREATE DATABASE IF NOT EXISTS other")
        a.command("CREATE TABLE IF NOT EXISTS other.t (x String) ENGINE = MergeTree() ORDER BY x")

    # the collector: collects (events + a quarantined record) with no DDL right
    events = scenario_events().events
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    create_topic(kafka_bootstrap, topic, 1)
    produce_events(kafka_bootstrap, topic, events, per_record=100, partitions=1)
    produce_records(kafka_bootstrap, topic, [(b"{not json", record_headers())])
    r = _cli("collect", "--bootstrap", kafka_bootstrap, "--audit-topic", topic, "--store", url["collector"],
             "--group", f"g-{topic}", "--until-idle", "--json", "--log-level", "warning")
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads(r.stdout)
    assert stats["stored"] == len({e.event_id for e in events}) and stats["quarantined"] == 1
    assert PASSWORDS["COLLECTOR"] not in r.stdout + r.stderr
    collector = Store(url["collector"])
    for sql in ("DROP TABLE {db:Identifier}.trace_events", "TRUNCATE TABLE {db:Identifier}.trace_events",
                "ALTER TABLE {db:Identifier}.trace_events DROP PARTITION 20261121",
                "CREATE TABLE {db:Identifier}.x (a String) ENGINE = Memory", "SELECT count() FROM other.t"):
        with pytest.raises(QueryError) as ei:
            collector.command(sql)
        assert ei.value.code in (291, 392, 497), (sql, ei.value)  # database access denied / DDL prohibited
    assert collector.init_schema() == []  # the prepared schema needs no DDL
    collector.close()

    # the CLI: reconcile (writes its run and verdicts, stages candidates), incident, trace-msg
    r = _cli("reconcile", "--from", "2026-11-21T00:00:00Z", "--to", "2026-11-21T01:00:00Z", "--json",
             "--store", url["cli"])
    assert r.returncode == 1, r.stderr[-2000:]  # messages were lost
    assert json.loads(r.stdout)["lost"] > 0
    r2 = _cli("incident", "--from", "2026-11-21T00:00:00Z", "--to", "2026-11-21T01:00:00Z", "--json",
              "--store", url["cli"])
    r3 = _cli("trace-msg", "split", "--json", "--store", url["cli"])
    assert r2.returncode == 1 and r3.returncode == 1, r2.stderr + r3.stderr
    assert json.loads(r3.stdout)["verdicts"]
    for out in (r, r2, r3):
        assert PASSWORDS["CLI"] not in out.stdout + out.stderr
    with Store(admin) as a:
        assert a.query("SELECT count() AS n FROM {db:Identifier}.reconcile_runs")[0]["n"] >= 1
        assert a.query("SELECT count() AS n FROM {db:Identifier}.verdicts")[0]["n"] > 0
        assert not a.query("SELECT name FROM system.tables WHERE database = 'msgtrace' AND name LIKE 'expected_%'")
    with pytest.raises(QueryError):
        Store(url["cli"]).query("SELECT count() FROM other.t")

    # Grafana's user reads and cannot write
    g = Store(url["grafana"])
    assert g.query("SELECT count() AS n FROM {db:Identifier}.verdicts")[0]["n"] > 0
    with pytest.raises(QueryError):
        g.insert_events(events[:1])
    # a wrong password is one line that does not echo it
    with pytest.raises((QueryError, StoreUnavailable)) as ei:
        Store(users_server.url("msgtrace", user="msgtrace_cli", password="wrong-" + PASSWORDS["CLI"])).query("SELECT 1")
    assert PASSWORDS["CLI"] not in str(ei.value) and "\n" not in str(ei.value)


def test_rbac_script_is_valid_clickhouse_sql(chdb_url):
    """deploy/clickhouse/rbac.sql (for servers with SQL access control) parses on chDB's ClickHouse;
    the init script fills every placeholder."""
    text = (DEPLOY / "clickhouse" / "rbac.sql").read_text()
    script = (DEPLOY / "clickhouse" / "initdb" / "10-msgtrace-users.sh").read_text()
    placeholders = set(re.findall(r"__[A-Z_]+_PASSWORD__", text))
    assert placeholders == {"__COLLECTOR_PASSWORD__", "__CLI_PASSWORD__", "__GRAFANA_PASSWORD__"}
    assert all(p in script for p in placeholders) and "--password" not in script
    body = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("--"))
    stmts = [s.strip() for s in body.split(";") if s.strip()]
    assert len(stmts) >= 9
    with Store(chdb_url) as s:
        for stmt in stmts:
            sql = re.sub(r"__[A-Z_]+_PASSWORD__", "x", stmt)
            formatted = s.query("SELECT formatQuery({q:String}) AS f", {"q": sql}, small=True)[0]["f"]
            assert formatted.split()[0] in ("CREATE", "GRANT"), formatted
    grants = " ".join(stmts)
    assert "GRANT INSERT ON msgtrace.trace_events TO msgtrace_collector" in grants
    assert "GRANT INSERT ON msgtrace.quarantine TO msgtrace_collector" in grants
    assert not re.search(r"GRANT [^;]*(DROP|ALTER|CREATE)[^;]*TO msgtrace_collector", grants)
    assert "GRANT INSERT ON msgtrace.verdicts TO msgtrace_cli" in grants
