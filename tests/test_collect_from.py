"""``msgtrace collect --from FILE|-``: a dump of the audit topic or of RocketMQ's trace topic streamed in
through the importer's path (the same validation, de-duplication and quarantine)."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tracer.cli import main as cli

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rocketmq"


def _collect(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, ["collect", *args], input=stdin)
    return r.exit_code, r.stdout, r.stderr


def test_collect_from_a_rocketmq_trace_dump_and_stdin_events(chdb_url):
    trace = (EXAMPLE / "red-packet.trace").read_bytes()
    code, out, _ = _collect("--from", "-", "--format", "rocketmq-trace", "--store", chdb_url, "--json", stdin=trace)
    first = json.loads(out)
    assert code == 0 and first["stored"] > 0 and first["quarantined"] >= 1, first  # the sample has a bad record
    code, out, _ = _collect("--from", str(EXAMPLE / "red-packet.trace"), "--format", "rocketmq-trace",
                            "--store", chdb_url, "--json")
    again = json.loads(out)
    assert code == 0 and again["stored"] == 0 and again["duplicates"] == first["stored"]  # nothing twice
    events = (EXAMPLE / "red-packet-hooks.ndjson").read_bytes()
    code, out, _ = _collect("--from", "-", "--store", chdb_url, "--json", stdin=events)
    assert code == 0 and json.loads(out)["stored"] == len(events.splitlines())


def test_collect_from_a_missing_file_is_one_line():
    code, _, err = _collect("--from", "/nonexistent/dump.ndjson", "--store", "chdb:///tmp/never-opened")
    assert code == 2 and err.strip() == "error: cannot read /nonexistent/dump.ndjson: No such file or directory"
