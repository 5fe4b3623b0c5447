"""A/B: two versions of msgtrace's hooks against plain kafka-python, interleaved on one broker.

    git archive <old-commit> tracer benchmarks queries | tar -x -C /tmp/before
    python benchmarks/ab_hooks.py --a /tmp/before --b . [--messages 20000] [--repeats 3]

Each repeat runs one fresh worker process per version (A, then B; the order
alternates per repeat) against the same Tansu broker. A worker times, in this
order, plain send+flush, traced send+flush, plain consumer loop, traced
consumer loop and traced consumer + ``processing()`` (the functions of that
version's ``benchmarks/bench_hooks.py``), so both versions see the same noise
and each traced figure has a plain figure from the same minute. Prints
medians, spreads and paired traced/plain ratios per version.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, logging, sys, tempfile, shutil
root, bootstrap, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root); sys.path.insert(0, root + "/benchmarks")
logging.basicConfig(level=logging.CRITICAL)
import bench_hooks as b
from tracer import Tracer
spool = tempfile.mkdtemp(prefix="msgtrace-ab-")
t = Tracer(service="ab", bootstrap=bootstrap, audit_topic="msgtrace.audit.ab", spool_dir=spool, adopt=False)
topic = b.fill_topic(bootstrap, n, t); t.flush(120)
b.bench_send(bootstrap, 1000, t); b.bench_send(bootstrap, 1000, None); t.flush(120)
out = {}
out["p_plain"] = n / b.bench_send(bootstrap, n, None); t.flush(120)
out["p_traced"] = n / b.bench_send(bootstrap, n, t); t.flush(120)
out["c_plain"] = n / b.bench_consume(bootstrap, topic, n, None); t.flush(120)
out["c_traced"] = n / b.bench_consume(bootstrap, topic, n, t); t.flush(120)
out["c_proc"] = n / b.bench_consume(bootstrap, topic, n, t, True); t.flush(120)
t.close(30)
shutil.rmtree(spool, ignore_errors=True)
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="directory holding version A (tracer/ and benchmarks/)")
    ap.add_argument("--b", required=True, help="directory holding version B")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tracer.localsvc import TansuBroker

    versions = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    res: dict[str, dict[str, list[float]]] = {v: {} for v in versions}
    broker = TansuBroker().start()
    try:
        for r in range(args.repeats):
            for v in (("A", "B") if r % 2 == 0 else ("B", "A")):
                p = subprocess.run([sys.executable, "-c", WORKER, versions[v], broker.bootstrap, str(args.messages)],
                                   capture_output=True, text=True, timeout=1800, cwd=versions[v])
                if p.returncode != 0:
                    sys.exit(f"worker {v} failed:\n{p.stderr[-3000:]}")
                row = json.loads(p.stdout.strip().splitlines()[-1])
                for k, x in row.items():
                    res[v].setdefault(k, []).append(x)
                print(f"repeat {r + 1} {v}: " + ", ".join(f"{k}={x:,.0f}/s" for k, x in row.items()), flush=True)
    finally:
        broker.stop()

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"

    print(f"\n{args.messages} messages x {args.repeats} repeats; msg/s median (min-max); ratio paired per worker run")
    print("| version | loop | plain msg/s | traced msg/s | ratio traced/plain |")
    print("|---|---|---|---|---|")
    for v, path in versions.items():
        d = res[v]
        for name, plain, traced in (("producer send+flush", "p_plain", "p_traced"),
                                    ("consumer poll+commit", "c_plain", "c_traced"),
                                    ("consumer + processing()", "c_plain", "c_proc")):
            ratios = [t / p for t, p in zip(d[traced], d[plain])]
            print(f"| {v} ({path}) | {name} | {med(d[plain])} | {med(d[traced])} | "
                  f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
