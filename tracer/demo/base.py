"""What every demo story shares: the ground truth it keeps, the service processes it drives, the plumbing.

A story (Kafka in :mod:`tracer.demo.story`, RabbitMQ in :mod:`tracer.demo.rabbit`) starts real
brokers and real service processes (:mod:`tracer.demo.apps`), breaks them, and writes down what it
broke: a :class:`Category` per kind of loss, with the orders injected into it and what the
reconciler must say about them per consumer group, before and after the replay. It never writes a
trace event and never decides a verdict (tests/test_demo.py checks that).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tracer.localsvc import TansuBroker

GROUPS = ("red-packet", "points")
AUDIT_TOPIC = "msgtrace.audit"


@dataclass(slots=True, frozen=True)
class Expect:
    """What the reconciler must say about one (message, group): a verdict, flags it must carry (it may
    carry more), and a text its evidence must contain ("" for none)."""

    verdict: str
    flags: frozenset[str] = frozenset()
    evidence: str = ""
    #: a verdict msgtrace gives today instead, because of a gap that is known and reported elsewhere
    #: (shown as such, not counted as detected, and not failing the demo); "" for none
    interim: str = ""
    interim_why: str = ""

    def label(self) -> str:
        return self.verdict + "".join(f" +{f}" for f in sorted(self.flags))


@dataclass(slots=True)
class Category:
    """One kind of loss: what the demo injects and what the reconciler must say, per group.

    ``expect``: the verdicts of the first reconcile; ``after``: those after the replay (the messages
    that can be recovered are delivered +replayed, the others keep their verdict with the replay
    attempt in their evidence). ``orders``: the order ids injected (message ids ``<order>:paid``).
    """

    name: str
    seed_case: str
    expect: dict[str, Expect]
    after: dict[str, Expect]
    orders: list[str] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        """Did the first reconcile find these messages lost in some group (so the replay re-publishes them)?"""
        return any(e.verdict not in ("delivered",) for e in self.expect.values())


def msg_id(order_id: str) -> str:
    return f"{order_id}:paid"


class App:
    """One service process; its JSON log lines (stdout) are all the orchestrator reads of it, and JSON
    commands on its stdin are all it tells it (``pay``, ``flush``, ``stop``)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._log = open(log_dir / f"{name}.log", "a", encoding="utf-8")  # noqa: SIM115  closed by stop()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self._cv:
                self.lines.append(item)
                self._cv.notify_all()

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._cv:
            return [ln for ln in self.lines if ln["event"] == event and all(ln.get(k) == v for k, v in match.items())]

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                v = pred()
                if v:
                    return v
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited (code {self.proc.returncode}) while waiting for {what}; "
                                       f"its log: {self._log.name}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: timed out after {timeout:.0f} s waiting for {what}")
                self._cv.wait(min(left, 0.2))

    def wait_event(self, event: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        """The latest log line ``event`` with the fields ``match`` (waiting for the first one)."""
        def latest() -> dict[str, Any] | None:
            got = self.find(event, **match)
            return got[-1] if got else None

        line: dict[str, Any] = self.wait(latest, timeout, f"{event} {match or ''}".strip())
        return line

    def flush(self, timeout: float = 30) -> None:
        """Ask the service to ship every audit event it recorded so far, and wait until it did."""
        n = len(self.find("flushed"))
        self.send(op="flush")
        done: dict[str, Any] = self.wait(lambda: next(iter(self.find("flushed")[n:]), None), timeout,
                                         "its audit events shipped")
        if not done.get("ok", True):
            raise RuntimeError(f"{self.name}: its audit events were not all shipped within its flush timeout")

    def assigned(self) -> list[int] | None:
        got = self.find("assigned")
        return got[-1]["partitions"] if got else None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """A clean stop (the service closes its clients and its tracer, shipping what is left)."""
        if self.proc.poll() is None:
            try:
                self.send(op="stop")
            except (BrokenPipeError, OSError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class StoryBase:
    """The plumbing of a story; subclasses define ``run()`` (the faults), ``app_argv()`` and ``settle()``."""

    #: the MQ of the business messages (kafka, rabbitmq)
    mq = "kafka"
    #: the client library of the services
    client = "kafka-python"
    #: can ``msgtrace replay`` re-publish this story's messages?
    replayable = False

    def __init__(self, workdir: Path, scale: int = 20, seed: int = 7, sink: str = "collector",
                 console: Console | None = None) -> None:
        self.workdir = workdir
        self.scale = max(4, scale)
        self.rng = random.Random(seed)
        self.sink = sink
        self.console = console or Console(stderr=True)
        self.cats = self.categories()
        self.store_url = f"chdb://{workdir / 'store'}"
        self.apps: dict[str, App] = {}
        self.dead_spools: list[Path] = []
        self.brokers: list[TansuBroker] = []
        self.audit: TansuBroker | None = None
        #: what the audit-broker fault did (audit_broker_fault): orders, lost, reshipped; None if not run
        self.audit_fault: dict[str, Any] | None = None
        self._n = 0
        self.t0 = time.time()
        for d in ("logs", "spool", "faults"):
            (workdir / d).mkdir(parents=True, exist_ok=True)

    # --- what subclasses give ----------------------------------------------------------------------
    def describe(self) -> str:
        return f"{self.mq} ({self.client})"

    def categories(self) -> dict[str, Category]:
        raise NotImplementedError

    def app_argv(self, role: str) -> list[str]:
        """The connection arguments of a service of ``role`` (its business broker)."""
        raise NotImplementedError

    def run(self) -> None:
        raise NotImplementedError

    def settle(self) -> None:
        """Wait until every group has settled what it processed, then have each live service ship its events."""
        raise NotImplementedError

    def cleanup(self) -> None:
        for app in self.apps.values():
            with contextlib.suppress(Exception):  # cleanup goes on whatever one process did
                app.kill()
        for b in self.brokers:
            b.stop()

    # --- plumbing ------------------------------------------------------------------------------------
    @property
    def business_bootstrap(self) -> str:
        """The business Kafka (stories on Kafka)."""
        raise NotImplementedError

    @property
    def audit_bootstrap(self) -> str:
        assert self.audit is not None
        return self.audit.bootstrap

    def step(self, text: str) -> None:
        self.console.print(f"[dim]{time.time() - self.t0:6.1f}s[/] {text}")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("MSGTRACE_KAFKA_BOOTSTRAP", "MSGTRACE_STORE", "MSGTRACE_SPOOL_DIR"):
            env.pop(k, None)  # the demo's services use the demo's brokers and store, never the shell's
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_audit(self) -> None:
        """The audit Kafka (a broker of its own: losing the business broker cannot wipe the audit)."""
        from kafka.admin import KafkaAdminClient, NewTopic

        self.audit = TansuBroker(workdir=str(self.workdir / "logs"))
        self.brokers.append(self.audit.start())  # tracked at once: cleanup() stops what started
        admin = KafkaAdminClient(bootstrap_servers=self.audit.bootstrap)
        try:
            admin.create_topics([NewTopic(AUDIT_TOPIC, 2, 1)])
        finally:
            admin.close()

    def audit_broker_fault(self, orders: list[str]) -> None:
        """The audit Kafka loses what it had acknowledged (a memory broker restarted: the seeds' page-cache
        loss, on the audit's own side) while the events of ``orders`` were shipped but not yet collected.
        Nothing here repairs anything: the emitters notice on their own (the audit topic is gone, then
        recreated) and ship the lost events again from their retained spool segments. The reconcile
        must then judge ``orders`` exactly (delivered), never a false loss; without recovery they would
        be audit_gap (tests/faults/test_audit_broker_lost.py)."""
        from tracer.localsvc import wait_until

        assert self.audit is not None
        if self.sink != "collector":
            return  # the direct sink writes to the store: no audit Kafka to lose
        self.flush_services()  # every event so far acknowledged by the audit topic, none collected yet
        self.audit.restart()
        self.step(f"[yellow]fault[/]: audit broker restarted: it lost every audit event it had acknowledged "
                  f"(the events of {len(orders)} delivered orders among them), none collected yet")
        live = [a for a in self.apps.values() if a.alive]

        def healed() -> dict[str, int] | None:
            for app in live:
                app.flush()
            last = [app.find("flushed")[-1] for app in live]
            if not all(f.get("reshipped", 0) > 0 for f in last):
                return None
            return {"lost": sum(int(f.get("audit_losses", 0)) for f in last),
                    "reshipped": sum(int(f["reshipped"]) for f in last)}

        got: dict[str, int] = wait_until(healed, 90, "every service to ship its lost audit events again",
                                         interval=0.5)
        self.audit_fault = {"orders": list(orders), "services": len(live), **got}
        self.step(f"{len(live)} services noticed on their own and shipped {got['reshipped']} audit events again "
                  "from their retained spool segments")

    def start_app(self, name: str, role: str, db: str, wait: bool = True, **extra: str) -> App:
        spool = self.workdir / "spool" / name
        spool.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tracer.demo.apps", role, "--mq", self.mq, "--client", self.client,
                *self.app_argv(role), "--spool-dir", str(spool), "--db", str(self.workdir / db),
                "--fault-dir", str(self.workdir / "faults")]
        if self.sink == "collector":
            argv += ["--audit-bootstrap", self.audit_bootstrap]
        else:
            argv += ["--store", self.store_url]
        for k, v in extra.items():
            argv += [f"--{k.replace('_', '-')}", v]
        app = App(name, argv, self.workdir / "logs", self._env())
        self.apps[name] = app
        if wait:
            app.wait_event("ready", timeout=60)
        return app

    def fault(self, name: str, on: bool) -> None:
        """Switch a fault the services look up by name (e.g. the payment API hanging)."""
        f = self.workdir / "faults" / name
        if on:
            f.touch()
        else:
            f.unlink(missing_ok=True)

    def new_order(self, cat: str, user: str | None = None, amount: str | None = None) -> dict[str, str]:
        self._n += 1
        oid = f"order-{self._n:05d}"
        self.cats[cat].orders.append(oid)
        return {"order_id": oid, "user_id": user or f"u-{self.rng.randint(1000, 9999)}",
                "amount": amount or f"{self.rng.randint(100, 2000) / 100:.2f}"}

    def pay(self, order: dict[str, str], **fault: Any) -> None:
        self.apps["order"].send(op="pay", **order, **fault)

    def alive(self, prefix: str) -> list[App]:
        return [a for n, a in self.apps.items() if n.startswith(prefix) and a.alive]

    def wait_logged(self, prefix: str, events: str | tuple[str, ...], timeout: float, what: str,
                    **match: Any) -> App:
        """The first live service named ``prefix...`` that logged one of ``events`` with the fields ``match``."""
        from tracer.localsvc import wait_until

        names = (events,) if isinstance(events, str) else events

        def found() -> App | None:
            return next((a for a in self.alive(prefix) if any(a.find(e, **match) for e in names)), None)

        app = wait_until(found, timeout, what)
        assert app is not None
        return app

    def done_everywhere(self, orders: list[str], rp_event: str | tuple[str, ...] = "paid", timeout: float = 60,
                        **match: Any) -> None:
        """Wait until both groups handled ``orders`` (by the services' own logs)."""
        for oid in orders:
            self.wait_logged("red-packet", rp_event, timeout, f"red-packet: {rp_event} {oid}", order_id=oid, **match)
            self.wait_logged("points", "points", timeout, f"points: {oid}", order_id=oid, **match)

    def flush_services(self) -> None:
        for app in self.apps.values():
            if app.alive:
                app.flush()

    def stop_services(self) -> None:
        """Stop every service cleanly, all at once (each closes its clients and ships what is left)."""
        apps = [a for a in self.apps.values() if a.alive]
        for app in apps:
            with contextlib.suppress(OSError):  # BrokenPipeError: it is going away already
                app.send(op="stop")
        for app in self.apps.values():
            app.stop()

    def orders_of_lost(self) -> set[str]:
        """Message ids the first reconcile must find lost in some group."""
        return {msg_id(o) for c in self.cats.values() if c.lost for o in c.orders}


def build_categories(cases: dict[str, str], replay: bool) -> dict[str, Category]:
    """The categories every story injects (``cases``: category -> how this story injects it), with what
    the reconciler must say per group before and, when the story replays, after the replay."""
    d, rp = "delivered", "red-packet"
    replayed = Expect(d, frozenset({"replayed"}))
    # A message rebuilt from the orders table has no event of its own before the replay's: the
    # reconciler takes its replay's producer events as its own (delivered +replayed once processed).
    rebuilt = replayed
    tried = "replayed by run"  # the replay attempt, in the evidence of a verdict it did not change

    def both(v: Expect) -> dict[str, Expect]:
        return {g: v for g in GROUPS}

    def rp_only(v: Expect) -> dict[str, Expect]:
        return {rp: v, "points": Expect(d)}

    table: dict[str, tuple[dict[str, Expect], dict[str, Expect]]] = {
        "delivered": (both(Expect(d)), both(Expect(d))),
        "never_sent": (both(Expect("never_sent")), both(rebuilt)),
        "send_failed": (both(Expect("send_failed")), both(replayed)),
        "lost_in_broker": (both(Expect("lost_in_broker")), both(replayed)),
        "lost_in_consumer": (rp_only(Expect("lost_in_consumer")), rp_only(replayed)),
        "failed_and_committed": (rp_only(Expect("failed_and_committed")),
                                 rp_only(Expect("failed_and_committed", evidence=tried))),
        "dead_lettered": (rp_only(Expect("dead_lettered")), rp_only(Expect("dead_lettered", evidence=tried))),
        "redelivered": ({rp: Expect(d), "points": Expect(d, frozenset({"redelivered"}))},) * 2,
    }
    return {name: Category(name, case, table[name][0], table[name][1] if replay else table[name][0])
            for name, case in cases.items()}
