"""The CLI surface: every command has help, errors are one clean line."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from tracer.cli import main
from tracer.events import Event
from tracer.store import Store


def all_commands(group: click.Group, ctx: click.Context, prefix=()):
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, ctx, prefix + (name,))


def test_every_command_has_help_text():
    ctx = click.Context(main)
    commands = list(all_commands(main, ctx))
    assert {"db", "trace-msg"} <= {path[0] for path, _ in commands}
    for path, cmd in commands:
        assert (cmd.help or "").strip(), f"msgtrace {' '.join(path)} has no help text"
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_db_init_and_trace_msg(chdb_url):
    r = CliRunner().invoke(main, ["db", "init", "--store", chdb_url])
    assert r.exit_code == 0, r.output
    assert "schema ready" in r.output
    Store(chdb_url).insert_events([Event(msg_id="order-1:paid", stage="sent", topic="order-paid")])
    r = CliRunner().invoke(main, ["trace-msg", "order-1:paid", "--store", chdb_url, "--json"])
    assert '"stage":"sent"' in r.output
    r = CliRunner().invoke(main, ["trace-msg", "nope", "--store", chdb_url])
    assert r.exit_code == 3


@pytest.mark.parametrize("url, words", [
    ("mysql://x", "unsupported store URL scheme"),
    ("clickhouse://u:secret@127.0.0.1:1/db", "cannot reach ClickHouse at 127.0.0.1:1"),
])
def test_store_errors_are_one_line(url, words):
    r = CliRunner().invoke(main, ["db", "init", "--store", url])
    assert r.exit_code == 2
    text = r.stderr
    assert words in text
    assert "secret" not in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


def test_markup_in_an_error_is_printed_literally():
    r = CliRunner().invoke(main, ["db", "init", "--store", "clickhouse://h:9000/a[/b]"])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
