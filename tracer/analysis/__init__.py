"""The analysis: what runs nightly or in an incident, never on a business service's hot path.

One module per question (docs/design.md): ``window`` (the range judged), ``rules`` (the verdict
rules table, the only place a rule is written, and the SQL generated from it), ``facts`` (the typed
facts of a pair), ``passes`` (pass 1 and pass 2 over a window), ``evidence`` (verdicts in words),
``refine`` + ``broker`` + ``consumer`` + ``rabbitmq`` (outside evidence), ``gaps`` (the audit's own
gaps), ``judge`` (one message: trace-msg), ``incident``, ``result``, ``expected`` (expected ids and
staging tables), ``sql`` (the one templating style) and ``reconcile`` (the run, phase by phase).
"""
