"""The window a reconcile run judges, built once and passed around as one value.

Messages whose time (first ``sent``, else first event) lies in [``from_us``, ``to_us``) are judged;
events count up to ``cut_us`` = ``to + grace`` (or now, if earlier); events are read from
``scan_from_us`` = ``from - lookback`` so that a message sent before the window is not mistaken for
one without ``sent``. Evidence queries read the same range.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tracer.errors import ConfigError

GRACE_S = 600
LOOKBACK_S = 86400
#: "no end": the one-message judge has no window
FAR_FUTURE_US = 2**62
_US = 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Window:
    from_us: int
    to_us: int
    grace_s: int
    lookback_s: int
    now_us: int
    cut_us: int
    scan_from_us: int

    @classmethod
    def build(cls, from_us: int, to_us: int, grace_s: int = GRACE_S, lookback_s: int = LOOKBACK_S,
              now: int | None = None) -> Window:
        from tracer.analysis.evidence import fmt_us

        if to_us <= from_us:
            raise ConfigError(f"empty window: --to ({fmt_us(to_us)}) must be after --from ({fmt_us(from_us)})")
        n = now if now is not None else now_us()
        return cls(from_us, to_us, grace_s, lookback_s, n, min(to_us + grace_s * _US, max(n, from_us + 1)),
                   max(0, from_us - lookback_s * _US))

    @classmethod
    def around(cls, ts_us: int, now: int, lookback_s: int = LOOKBACK_S) -> Window:
        """Evidence range of the one-message judge: ``lookback_s`` before ``ts_us`` until now."""
        return cls(0, FAR_FUTURE_US, 0, lookback_s, now, now + 1, max(0, ts_us - lookback_s * _US))

    def params(self) -> dict[str, Any]:
        """The window's query parameters (every reconcile query names them alike)."""
        return {"scan_from": self.scan_from_us, "cut": self.cut_us, "from_us": self.from_us, "to_us": self.to_us}

    def scan(self) -> dict[str, Any]:
        """The scanned range only (evidence queries)."""
        return {"scan_from": self.scan_from_us, "cut": self.cut_us}
