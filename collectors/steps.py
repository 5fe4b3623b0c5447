"""The collector's processing steps: decode -> batch -> write -> commit, one module each.

The modules are ``step_*.py``, flat, so the package list of the build needs no entry.

Arroyo-style: every step keeps the full contract of :class:`collectors.types.Step`
(``submit`` may raise :class:`MessageRejected` when its bounded buffer is full; ``poll`` does
timed work; ``join(timeout)`` flushes everything downstream, bounded; ``reset`` drops what is
held; ``empty``; ``close``) and holds the next step. Buffers are tiny and fixed: the decode
step keeps at most one decoded record, the batch step one batch being built and one ready, the
write step one batch, the commit step one offset map. Backpressure travels up as
MessageRejected and ends in the consumer pausing its partitions. The store is behind a
:class:`collectors.types.BatchWriter` (``collectors.writer.StoreWriter``).
"""
from .step_base import Backoff, StateLog, log_event, submit_until
from .step_batch import DEFAULT_RAW_LIMIT, BatchStep
from .step_commit import CommitStep
from .step_decode import DecodeStep
from .step_write import WriteStep

__all__ = ["DEFAULT_RAW_LIMIT", "Backoff", "BatchStep", "CommitStep", "DecodeStep", "StateLog", "WriteStep",
           "log_event", "submit_until"]
