"""Benchmark: trace-msg on a store of 10M events, one tree against another (e.g. before/after a change).

* the lookup as the command does it (the events of one id + its verdicts: ``judge_message``), in
  this process, for the tree this script runs from;
* the causal order of the timeline (``tracer.analysis.timeline.causal``) on the same events, and on a
  skewed history with redeliveries and a replay (the work it adds to the command);
* the whole ``trace-msg <id>`` command in a fresh interpreter, alternating between the trees given
  (``--tree NAME=PATH``, each a checkout; PYTHONPATH is set to it), same ids, interleaved repeats.

The store is generated with bench_reconcile.py's ``generate`` (INSERT ... SELECT FROM numbers()) and
kept with ``--store DIR`` for later runs.

    python benchmarks/bench_tracemsg.py --store /tmp/tm-store --tree before=/tmp/before --tree after=.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_reconcile import generate  # noqa: E402

from tracer.analysis.judge import judge_message  # noqa: E402
from tracer.analysis.timeline import causal  # noqa: E402
from tracer.events import Event  # noqa: E402
from tracer.store import Store  # noqa: E402


def stats(xs: list[float], unit: float = 1.0, fmt: str = "{:.3f}") -> str:
    xs = sorted(x * unit for x in xs)
    return (f"median {fmt.format(statistics.median(xs))} (p10 {fmt.format(xs[len(xs) // 10])}, "
            f"p90 {fmt.format(xs[len(xs) * 9 // 10])}, n={len(xs)})")


def skewed_history(n_groups: int = 3) -> list[Event]:
    """A message with retries, a consumer clock 5 min behind, a redelivery to another member and a replay."""
    t = 1_795_219_200_000_000
    out = [Event("m", "sent", t, service="order", host="h1", pid=1, emitter_id="p", seq=1),
           Event("m", "send_failed", t + 10, service="order", host="h1", pid=1, emitter_id="p", seq=2),
           Event("m", "sent", t + 20, service="order", host="h1", pid=1, emitter_id="p", seq=3),
           Event("m", "broker_acked", t + 30, service="order", host="h1", pid=1, emitter_id="p", seq=4,
                 partition=0, offset=9)]
    for g in range(n_groups):
        for member in range(2):
            skew = -300_000_000 if member == 0 else 0
            base = dict(service=f"svc{g}", host=f"c{g}-{member}", pid=10 + member, emitter_id=f"c{g}{member}",
                        consumer_group=f"g{g}", partition=0)
            for k, stage in enumerate(("received", "business_done", "offset_committed")):
                out.append(Event("m", stage, t + 1000 * (k + 1) + skew + member * 5_000_000, seq=k + 1,
                                 offset=9 + (stage == "offset_committed"), **base))
    out.append(Event("m", "sent", t + 3_600_000_000, service="replay", host="h9", pid=9, emitter_id="r", seq=1,
                     topic="retry", attrs={"replay_run": "r1"}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True, metavar="DIR", help="chDB dir (generated once, then reused)")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--lookups", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    url = f"chdb://{a.store}"
    messages = a.events // 5
    store = Store(url)
    if not store.schema_present() or store.query("SELECT count() AS n FROM {db:Identifier}.trace_events")[0]["n"] \
            < a.events:
        store.init_schema()
        print(f"generated {a.events} events in {generate(store, messages):.1f} s", flush=True)
    rnd = random.Random(42)
    ids = [f"order-{rnd.randrange(messages)}:paid" for _ in range(a.lookups)]
    lookup, order = [], []
    with store.session():
        for m in ids[:5]:
            judge_message(store, m)
        for m in ids:
            t = time.perf_counter()
            evs = store.select_events(m)
            vs = judge_message(store, m, events=evs)
            t1 = time.perf_counter()
            causal(evs)
            order.append(time.perf_counter() - t1)
            lookup.append(t1 - t)
            assert evs and vs
    store.close()
    print(f"lookup (events + verdicts), this tree: {stats(lookup, 1000, '{:.1f}')} ms")
    print(f"causal order of those events: {stats(order, 1e6, '{:.0f}')} µs")
    h = skewed_history()
    reps = []
    for _ in range(200):
        t = time.perf_counter()
        line = causal(h)
        reps.append(time.perf_counter() - t)
    print(f"causal order, skewed history of {len(h)} events ({len(line.skews)} skews found): "
          f"{stats(reps, 1e6, '{:.0f}')} µs")
    trees = [tuple(x.split("=", 1)) for x in a.tree] or [("this", str(ROOT))]
    whole: dict[str, list[float]] = {name: [] for name, _ in trees}
    ratios: list[float] = []
    for i in range(a.repeats):
        got = {}
        for name, path in (trees if i % 2 == 0 else trees[::-1]):
            env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", "import sys; from tracer.cli import trace_msg_main; "
                                "trace_msg_main(sys.argv[1:])", ids[i % len(ids)], "--store", url],
                               capture_output=True, text=True, env=env, cwd=path)
            got[name] = time.perf_counter() - t
            assert p.returncode in (0, 1), p.stderr[-2000:]
            whole[name].append(got[name])
        if len(trees) == 2:
            ratios.append(got[trees[1][0]] / got[trees[0][0]])
    for name, xs in whole.items():
        print(f"whole trace-msg command, {name}: {stats(xs)} s")
    if ratios:
        print(f"ratio {trees[1][0]}/{trees[0][0]} per repeat: {stats(ratios, 1, '{:.2f}')}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
