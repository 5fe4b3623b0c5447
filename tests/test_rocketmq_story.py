"""The red-packet story on RocketMQ (examples/rocketmq): the sample files reconcile as documented.

The committed sample files are exactly what examples/rocketmq/story.py writes; imported with the CLI
as examples/rocketmq/README.md says, ``msgtrace reconcile`` names every case's seed loss, on chDB and
ClickHouse 18.16: with msgtrace's hooks, and from RocketMQ's traces alone (where the cases that need
the hooks show what the traces cannot see).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracer.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rocketmq"


def load_story():
    spec = importlib.util.spec_from_file_location("rocketmq_story", EXAMPLE / "story.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rocketmq_story"] = mod
    spec.loader.exec_module(mod)
    return mod


story = load_story()


def test_sample_files_are_what_the_generator_writes(tmp_path):
    for p in story.write(tmp_path):
        assert p.read_bytes() == (EXAMPLE / p.name).read_bytes(), f"{p.name}: run python examples/rocketmq/story.py"


def run(args: list[str], input: bytes | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(main, args, input=input)
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, r.stdout


def reconcile_json(store_url: str) -> dict:
    code, out = run(["reconcile", "--from", story.WINDOW[0], "--to", story.WINDOW[1], "--store", store_url,
                     "--expected", str(EXAMPLE / "orders-paid.csv"), "--json", "--no-write"])
    assert code == 1  # losses
    return json.loads(out)


def verdicts(doc: dict) -> dict[str, tuple[str, list[str]]]:
    got: dict[str, tuple[str, list[str]]] = {}
    for m in doc["messages"]:
        if m["consumer_group"] in (story.GROUP, ""):  # "(no group)": the reconciler's pair for a bare rolled_back
            got[m["msg_id"]] = (m["verdict"], m["flags"])
    return got


@pytest.mark.parametrize("mode", ["with_hooks", "traces_only"])
def test_story_reconciles_as_documented(store_url, mode):
    trace_args = ["import", "rocketmq-trace", str(EXAMPLE / "red-packet.trace"), "--store", store_url, "--json",
                  "--group-topic", f"{story.GROUP}={story.TOPIC}"]
    if mode == "with_hooks":
        trace_args += ["--hooked-group", story.GROUP]
    code, out = run(trace_args)
    assert code == 0
    stats = json.loads(out)
    assert stats["quarantined"] == 1 and stats["skipped"] == 1  # the truncated body; the UNKNOW check-back
    if mode == "with_hooks":
        code, out = run(["import", "events", str(EXAMPLE / "red-packet-hooks.ndjson"), "--store", store_url, "--json"])
        assert code == 0 and json.loads(out)["stored"] == len(story.hook_events())
    got = verdicts(reconcile_json(store_url))
    for case in story.CASES:
        want = getattr(case, mode)
        verdict = got.get(case.order, ("delivered", []))[0]
        assert verdict == want, f"{case.order} ({case.story}): {verdict}, documented {want}"
        if mode == "with_hooks" and case.order in story.FLAGS:
            assert got[case.order][1] == story.FLAGS[case.order]
    # a re-import changes nothing
    code, out = run(trace_args)
    assert code == 0
    again = json.loads(out)
    assert again["stored"] == 0 and again["quarantined"] == 0 and again["duplicates"] == stats["stored"]
    assert verdicts(reconcile_json(store_url)) == got
