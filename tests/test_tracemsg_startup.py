"""trace-msg start-up: small results read without pyarrow must equal the Arrow path, and the command
must not import pyarrow/numpy (they cost ~0.2 s of a sub-second command).

Real chDB and the real 18.16 server (`store` fixture); the import check runs the real entry point
in a fresh interpreter.
"""
from __future__ import annotations

import math
import subprocess
import sys

from tests.test_tracemsg import HOSTILE
from tracer.events import Event

_TYPED = """
SELECT {s:String} AS s, toUInt64(18446744073709551615) AS u64, toInt64(-9223372036854775808) AS i64,
       toInt32(-7) AS i32, toUInt8(255) AS u8, 1.5 AS f, nan AS fnan, inf AS finf, -inf AS fninf,
       CAST(NULL AS Nullable(String)) AS ns, CAST(NULL AS Nullable(Int64)) AS ni, toNullable(toInt64(3)) AS nv,
       [toUInt64(1), toUInt64(18446744073709551615)] AS au, ['a', {s:String}] AS astr,
       [CAST(NULL AS Nullable(Int32)), toNullable(toInt32(4))] AS an, CAST([] AS Array(String)) AS ae
"""


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def test_small_results_equal_the_default_path(store):
    for s in HOSTILE[:4] + ["uni-čšž-红包-🧧", ""]:
        fast = store.query(_TYPED, {"s": s}, small=True)
        ref = store.query(_TYPED, {"s": s})
        assert len(fast) == len(ref) == 1
        assert list(fast[0]) == list(ref[0])
        for k in ref[0]:
            assert _same(fast[0][k], ref[0][k]), (k, fast[0][k], ref[0][k])
    assert store.query("SELECT 1 AS x WHERE 0", small=True) == []


def test_select_events_round_trip(store):
    ev = [Event(event_id=f"e{i}", msg_id=m, stage="sent", ts_us=1_795_219_200_000_000 + i, service="svc",
                host="h", pid=1, mq="kafka", topic="t", partition=None if i % 2 else 3,
                offset=None if i % 2 else 2**40, key=None, error="bad\tthing" if i % 3 == 0 else None,
                emitter_id="em", seq=i + 1, attrs={"k": "v", "ü": m[:20]})
          for i, m in enumerate(HOSTILE)]
    store.insert_events(ev)
    for e in ev:
        got = store.select_events(e.msg_id)
        assert [g.to_dict() for g in got] == [e.to_dict()]


def test_trace_msg_does_not_import_pyarrow(tmp_path):
    from tracer.store import Store

    with Store(f"chdb://{tmp_path}/s") as st:
        st.init_schema()
        st.insert_events([Event(event_id="e1", msg_id="order-1:paid", stage="sent", ts_us=1, service="s",
                                host="h", pid=1, mq="kafka", topic="t", emitter_id="em", seq=1)])
    code = (
        "import sys\n"
        "from tracer.cli import trace_msg_main\n"
        f"sys.argv = ['trace-msg', 'no-such-id', '--store', 'chdb://{tmp_path}/s']\n"
        "try:\n"
        "    trace_msg_main()\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = [m for m in ('pyarrow', 'numpy', 'pandas', 'clickhouse_driver') if m in sys.modules]\n"
        "print('HEAVY', heavy, 'EXIT', code)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] EXIT 3" in p.stdout, (p.stdout, p.stderr)
