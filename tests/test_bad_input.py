"""Bad input everywhere it enters, generated (hypothesis): each gets one clear line or is kept.

- audit records: garbage, truncated, wrong types, unknown stage or version, invalid UTF-8, 10 MB:
  ``decode_batch`` never raises, every line is either a valid event or a bad line with a reason,
  and a good line next to a bad one is kept;
- CLI arguments: dates, windows, store URLs, ids (quotes, newlines, unicode, 10 KB): exit 2 with one
  line on stderr naming what was wrong (never a traceback, never exit 1 = "lost"), passwords never
  echoed; an id that is not stored is exit 3, whatever its characters;
- expected-id files: blank lines, BOM, duplicates, CRLF, 1M lines: every distinct id counted once;
- environment values: a bad store URL or lock timeout in the environment is one line, exit 2.
"""
from __future__ import annotations

import string

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer.analysis.expected import ExpectedSource
from tracer.cli import main
from tracer.events import COLUMNS, FORMAT_HEADER, Event, decode_batch, encode_event, record_headers

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _event(i: int = 0) -> Event:
    return Event(msg_id=f"m-{i}", stage="sent", service="svc", host="h", pid=1, topic="t", emitter_id="e", seq=i + 1)


def _one_line_error(result) -> str:
    """The CLI failed cleanly: exit 2, exactly one non-empty line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def initialised_chdb(chdb_url):
    from tracer.store import Store

    with Store(chdb_url) as s:
        s.init_schema()
    return chdb_url


# --- audit records ------------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))


@SETTINGS
@given(st.binary(max_size=2000))
def test_garbage_records_never_raise_and_every_line_is_accounted(raw):
    batch = decode_batch(raw, record_headers())
    lines = [ln for ln in raw.split(b"\n") if ln.strip()]
    if not raw.strip():
        assert len(batch.bad) == 1 and not batch.events
    else:
        assert len(batch.events) + len(batch.bad) == len(lines)
    assert all(b.error and "\n" not in b.error for b in batch.bad)


@SETTINGS
@given(st.sampled_from(COLUMNS), json_scalars)
def test_a_wrong_field_is_named_and_its_neighbours_kept(field, value):
    good = encode_event(_event(1))
    obj = orjson.loads(encode_event(_event(2)))
    obj[field] = value
    try:
        line = orjson.dumps(obj)
    except TypeError:
        return
    batch = decode_batch(good + b"\n" + line + b"\n" + good, record_headers())
    assert len(batch.events) >= 2  # both good lines survive whatever the middle one is
    if batch.bad:
        (bad,) = batch.bad
        assert bad.line == 2 and bad.error


@SETTINGS
@given(st.integers(min_value=1, max_value=200))
def test_truncated_lines_are_bad_lines_not_crashes(cut):
    line = encode_event(_event(3))
    batch = decode_batch(encode_event(_event(4)) + b"\n" + line[:-cut], record_headers())
    assert len(batch.events) == 1 and len(batch.bad) == 1


def test_invalid_utf8_unknown_stage_unknown_version_and_10mb():
    ev = orjson.loads(encode_event(_event(5)))
    bad_utf8 = encode_event(_event(6)).replace(b'"m-6"', b'"m-\xff\xfe"')
    unknown_stage = orjson.dumps({**ev, "stage": "teleported"})
    batch = decode_batch(b"\n".join([bad_utf8, unknown_stage, encode_event(_event(7))]), record_headers())
    assert [e.msg_id for e in batch.events] == ["m-7"]
    assert len(batch.bad) == 2 and "unknown stage" in batch.bad[1].error
    v = decode_batch(encode_event(_event(8)), [(FORMAT_HEADER, b"99")])
    assert not v.events and "unknown format version" in v.bad[0].error
    huge = decode_batch(b"x" * (16 * 1024 * 1024 + 1), record_headers())
    assert not huge.events and "exceeds the limit" in huge.bad[0].error
    ten_mb = decode_batch(b"\n".join([encode_event(_event(9))] * 10_000) + b"\n" + b"y" * (10 << 20),
                          record_headers())
    assert len(ten_mb.events) == 10_000 and len(ten_mb.bad) == 1


# --- CLI arguments -------------------------------------------------------------------------------

not_a_time = st.text(alphabet=string.ascii_letters + string.punctuation + " ", min_size=1, max_size=30).filter(
    lambda s: s.strip() and not s.strip().lower().startswith(("now", "today", "yesterday")))


@SETTINGS
@given(not_a_time)
def test_bad_dates_are_one_line_naming_the_option(chdb_url, text):
    r = CliRunner().invoke(main, ["reconcile", "--from", text, "--to", "2026-11-21", "--store", chdb_url,
                                  "--no-write"], catch_exceptions=False)
    if r.exit_code == 0:  # hypothesis found a spelling the parser accepts: then it must be a real time
        return
    line = _one_line_error(r)
    assert "--from" in line or "from" in line.lower()


def test_reversed_and_empty_windows(chdb_url):
    for a, b in (("2026-11-22", "2026-11-21"), ("2026-11-21T00:00:00Z", "2026-11-21T00:00:00Z")):
        r = CliRunner().invoke(main, ["reconcile", "--from", a, "--to", b, "--store", chdb_url, "--no-write"],
                               catch_exceptions=False)
        assert "--to" in _one_line_error(r)


@SETTINGS
@given(st.sampled_from(["mysql://u:s3cr3t-pw@h/db", "chdb://", "clickhouse://", "clickhouse://u:s3cr3t-pw@:9/db",
                        "clickhouse://u:s3cr3t-pw@h:notaport/db", "clickhouse://u:s3cr3t-pw@h:9000/bad-db-name!",
                        "chdb:///tmp/x?database=1bad", "s3cr3t-pw", ""]))
def test_bad_store_urls_are_one_line_without_the_password(url):
    r = CliRunner().invoke(main, ["trace-msg", "some-id", "--store", url], catch_exceptions=False)
    line = _one_line_error(r)
    assert "s3cr3t-pw" not in r.stderr + r.stdout, line


@SETTINGS
@given(st.text(min_size=1, max_size=300).filter(lambda s: not s.startswith("-")))
def test_any_unknown_id_is_exit_3(initialised_chdb, msg_id):
    chdb_url = initialised_chdb
    r = CliRunner().invoke(main, ["trace-msg", msg_id, "--store", chdb_url, "--json"], catch_exceptions=False)
    assert r.exit_code == 3, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_ten_kilobyte_and_control_character_ids_round_trip(chdb_url):
    from tracer.store import Store

    ids = ["x" * 10_240, "nl\nid", "tab\tid", "quote'\"id", "红包-🧧", "nul\0id"]
    with Store(chdb_url) as s:
        s.init_schema()
        s.insert_events([Event(msg_id=m, stage="sent", service="s", host="h", pid=1, topic="t", emitter_id="e",
                               seq=i + 1) for i, m in enumerate(ids)])
    for m in ids:
        r = CliRunner().invoke(main, ["trace-msg", m, "--store", chdb_url, "--json"], catch_exceptions=False)
        assert r.exit_code in (0, 1), (m[:20], r.stderr)
        assert orjson.loads(r.stdout)["events"][0]["stage"] == "sent"


# --- expected-id files ---------------------------------------------------------------------------

@SETTINGS
@given(st.lists(st.text(alphabet=string.ascii_letters + string.digits + "-:_", min_size=1, max_size=12),
                min_size=1, max_size=50),
       st.booleans(), st.booleans(), st.integers(min_value=0, max_value=3))
def test_expected_files_blank_lines_bom_crlf_duplicates(tmp_path_factory, ids, bom, crlf, blanks):
    nl = "\r\n" if crlf else "\n"
    text = nl.join(ids + ids[: len(ids) // 2] + [""] * blanks) + nl
    path = tmp_path_factory.mktemp("exp") / "ids.txt"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    got = [i for b in ExpectedSource(path=str(path)).batches() for i in b]
    assert set(got) == set(ids)
    assert all(i and "\r" not in i and "\ufeff" not in i for i in got)


def test_a_million_expected_ids_load_and_count_once(initialised_chdb, tmp_path):
    chdb_url = initialised_chdb
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(f"order-{i}:paid" for i in range(1_000_000)) + "\n" + "order-7:paid\n")
    r = CliRunner().invoke(main, ["reconcile", "--from", "2026-11-21", "--to", "2026-11-22", "--expected",
                                  str(path), "--store", chdb_url, "--json", "--no-write"], catch_exceptions=False)
    assert r.exit_code == 1, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["summary"]["never_sent"] == 1_000_000


# --- environment values --------------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [("MSGTRACE_STORE", "nonsense://x"), ("MSGTRACE_STORE", "clickhouse://"),
                                        ("MSGTRACE_STORE_LOCK_TIMEOUT", "soon")])
def test_bad_environment_values_are_one_line(monkeypatch, chdb_url, name, value):
    monkeypatch.setenv(name, value)
    args = ["trace-msg", "x"] + ([] if name == "MSGTRACE_STORE" else ["--store", chdb_url])
    line = _one_line_error(CliRunner().invoke(main, args, catch_exceptions=False))
    assert name in line or "store" in line.lower()
