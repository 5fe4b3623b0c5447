"""The red-packet story, end to end, with every loss from the seeds injected as a real fault.

Nothing here writes a trace event or decides a verdict: events come from the
hooks inside the apps' processes, verdicts from ``msgtrace reconcile``. The
orchestrator only starts and breaks things, and keeps the ground truth of what
it broke, so the two can be put side by side.
"""
from __future__ import annotations

import json
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from tracer.localsvc import TansuBroker, free_port, wait_until
from tracer.demo.apps import DLQ_TOPIC, TOPIC
from tracer.demo.proxy import FaultProxy

GROUPS = ("red-packet", "points")
AUDIT_TOPIC = "msgtrace.audit"


@dataclass(slots=True)
class Category:
    """One kind of loss: what the demo injects and what the reconciler must say, per group."""

    name: str
    seed_case: str
    expect: dict[str, tuple[str, frozenset[str]]]  # group -> (verdict, flags)
    orders: list[str] = field(default_factory=list)


def _cat(name: str, case: str, rp: str, pts: str, pts_flags: tuple[str, ...] = ()) -> Category:
    return Category(name, case, {"red-packet": (rp, frozenset()), "points": (pts, frozenset(pts_flags))})


def categories() -> dict[str, Category]:
    cats = [
        _cat("delivered", "the normal path", "delivered", "delivered"),
        _cat("never_sent", "order committed, process killed before send", "never_sent", "never_sent"),
        _cat("send_failed", "network to the broker cut during the send, error swallowed", "send_failed",
             "send_failed"),
        _cat("lost_in_broker", "broker acked from memory and restarted before consumption", "lost_in_broker",
             "lost_in_broker"),
        _cat("lost_in_consumer", "auto-commit ran ahead of a worker thread; instance SIGKILLed",
             "lost_in_consumer", "delivered"),
        _cat("failed_and_committed", "handler raised, error swallowed, offset committed",
             "failed_and_committed", "delivered"),
        _cat("dead_lettered", "poison message sent to the dead-letter topic", "dead_lettered", "delivered"),
        _cat("redelivered", "points instance killed after processing, before its commit",
             "delivered", "delivered", ("redelivered",)),
    ]
    return {c.name: c for c in cats}


class App:
    """One service process; its JSON log lines are collected for the orchestrator."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._log = open(log_dir / f"{name}.log", "a", encoding="utf-8")
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
            return [l for l in self.lines if l["event"] == event and all(l.get(k) == v for k, v in match.items())]

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                v = pred()
                if v:
                    return v
                if self.proc.poll() is not None and not v:
                    raise RuntimeError(f"{self.name} exited (code {self.proc.returncode}) while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: timed out after {timeout:.0f} s waiting for {what}")
                self._cv.wait(min(left, 0.2))

    def wait_event(self, event: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
        return self.wait(lambda: (self.find(event, **match) or [None])[-1], timeout,
                         f"{event} {match or ''}".strip())

    def assigned(self) -> list[int] | None:
        got = self.find("assigned")
        return got[-1]["partitions"] if got else None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            if self.name.startswith("order"):
                try:
                    self.send(op="stop")
                except (BrokenPipeError, OSError):
                    pass
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Story:
    """Runs the demo; see ``run()``."""

    def __init__(self, workdir: Path, scale: int = 20, seed: int = 7, sink: str = "collector",
                 console: Console | None = None) -> None:
        self.workdir = workdir
        self.scale = max(4, scale)
        self.rng = random.Random(seed)
        self.sink = sink
        self.console = console or Console(stderr=True)
        self.cats = categories()
        self.store_url = f"chdb://{workdir / 'store'}"
        self.apps: dict[str, App] = {}
        self.dead_spools: list[Path] = []
        self.brokers: list[TansuBroker] = []
        self.proxy: FaultProxy | None = None
        self._n = 0
        self.t0 = time.time()

    # --- plumbing ------------------------------------------------------------------
    def step(self, text: str) -> None:
        self.console.print(f"[dim]{time.time() - self.t0:6.1f}s[/] {text}")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("MSGTRACE_KAFKA_BOOTSTRAP", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_app(self, name: str, role: str, db: str, **extra: str) -> App:
        spool = self.workdir / "spool" / name
        spool.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tracer.demo.apps", role, "--bootstrap", self.proxy.address,
                "--spool-dir", str(spool), "--db", str(self.workdir / db)]
        if self.sink == "collector":
            argv += ["--audit-bootstrap", self.audit.bootstrap]
        else:
            argv += ["--store", self.store_url]
        for k, v in extra.items():
            argv += [f"--{k.replace('_', '-')}", v]
        app = App(name, argv, self.workdir / "logs", self._env())
        self.apps[name] = app
        app.wait_event("ready", timeout=60)
        return app

    def new_order(self, cat: str, user: str | None = None, amount: str | None = None) -> dict[str, str]:
        self._n += 1
        oid = f"order-{self._n:05d}"
        self.cats[cat].orders.append(oid)
        return {"order_id": oid, "user_id": user or f"u-{self.rng.randint(1000, 9999)}",
                "amount": amount or f"{self.rng.randint(100, 2000) / 100:.2f}"}

    def pay(self, order: dict[str, str], **fault: Any) -> None:
        self.apps["order"].send(op="pay", **order, **fault)

    def create_topics(self) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.proxy.address, request_timeout_ms=10000)
        try:
            admin.create_topics([NewTopic(TOPIC, 2, 1), NewTopic(DLQ_TOPIC, 1, 1)])
        finally:
            admin.close()

    def caught_up(self, group: str) -> bool:
        """Has ``group`` committed everything that is in the topic?"""
        from kafka import KafkaConsumer, TopicPartition

        probe = KafkaConsumer(bootstrap_servers=self.proxy.address, group_id=group, enable_auto_commit=False)
        try:
            tps = [TopicPartition(TOPIC, p) for p in (0, 1)]
            ends = probe.end_offsets(tps)
            self.last_lag = {tp.partition: (probe.committed(tp), ends[tp]) for tp in tps}
            return all((c or 0) >= e for c, e in self.last_lag.values())
        finally:
            probe.close()

    def done_everywhere(self, orders: list[str], rp_event: str = "paid", timeout: float = 60) -> None:
        """Wait until both groups handled ``orders`` (by the apps' own logs)."""
        rps = self.alive("red-packet")
        pts = self.alive("points")
        for oid in orders:
            wait_until(lambda: any(a.find(rp_event, order_id=oid) for a in rps), timeout,
                       f"red-packet: {rp_event} {oid}")
            wait_until(lambda: any(a.find("points", order_id=oid) for a in pts), timeout, f"points: {oid}")

    def alive(self, prefix: str) -> list[App]:
        return [a for n, a in self.apps.items() if n.startswith(prefix) and a.proc.poll() is None]

    # --- the story -------------------------------------------------------------------
    def run(self) -> None:
        w = self.workdir
        for d in ("logs", "spool"):
            (w / d).mkdir(parents=True, exist_ok=True)
        proxy_port = free_port()
        self.business = TansuBroker(workdir=str(w / "logs"), advertised_port=proxy_port)
        self.brokers.append(self.business.start())  # tracked at once: cleanup() stops what started
        self.audit = TansuBroker(workdir=str(w / "logs"))
        self.brokers.append(self.audit.start())
        self.proxy = FaultProxy(self.business.port, port=proxy_port)
        self.step(f"brokers up: business {self.proxy.address} (through a fault proxy), "
                  f"audit {self.audit.bootstrap}; store {self.store_url}")
        self.create_topics()
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.audit.bootstrap)
        admin.create_topics([NewTopic(AUDIT_TOPIC, 2, 1)])
        admin.close()

        order = self.start_app("order", "order", "orders.db")

        # 3. the broker acknowledges, then loses the messages (memory broker restarted)
        lost = [self.new_order("lost_in_broker") for _ in range(2)]
        for o in lost:
            self.pay(o)
        for o in lost:
            order.wait_event("acked", order_id=o["order_id"])
        self.step(f"[yellow]fault[/]: business broker restarted after acking {len(lost)} orders "
                  "(acked from memory, never consumed)")
        order.stop()  # a deploy goes by; its spool is shipped on the way out
        self.business.restart()
        self.proxy.reset_all()
        self.create_topics()
        order = self.start_app("order", "order", "orders.db")

        # consumers join one step at a time (Tansu wedges groups changed mid-rebalance)
        rp1 = self.start_app("red-packet-1", "red-packet", "redpacket.db")
        rp1.wait(lambda: rp1.assigned() == [0, 1], 60, "red-packet-1 owning both partitions")
        rp2 = self.start_app("red-packet-2", "red-packet", "redpacket.db")
        rp2.wait(lambda: rp2.assigned() and rp1.assigned() and len(rp1.assigned()) == 1, 60,
                 "red-packet group split over two instances")
        pts1 = self.start_app("points-1", "points", "points.db", commit_every="3")
        pts1.wait(lambda: pts1.assigned() == [0, 1], 60, "points-1 owning both partitions")
        pts2 = self.start_app("points-2", "points", "points.db", commit_every="3")
        pts2.wait(lambda: pts2.assigned() and pts1.assigned() and len(pts1.assigned()) == 1, 60,
                  "points group split over two instances")
        self.step("consumers ready: red-packet x2 (auto-commit, worker threads), points x2 (manual commit)")

        # the normal path
        batch = [self.new_order("delivered") for _ in range(self.scale)]
        for o in batch:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in batch])
        self.step(f"{len(batch)} orders paid and delivered to both groups")

        # 5. handler raises, error swallowed, offset committed
        frozen = [self.new_order("failed_and_committed", user=f"frozen-{i}") for i in range(2)]
        # 6. poison message to the dead-letter topic
        poison = [self.new_order("dead_lettered", amount=a) for a in ("-5.00", "NaN")]
        for o in frozen + poison:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in frozen], rp_event="handler_error")
        self.done_everywhere([o["order_id"] for o in poison], rp_event="dead_lettered")
        self.step(f"[yellow]fault[/]: {len(frozen)} payments rejected and swallowed, "
                  f"{len(poison)} poison messages dead-lettered")

        # 1. order committed, process killed before the send
        ns = self.new_order("never_sent")
        self.pay(ns, crash_before_send=True)
        order.proc.wait(30)
        self.dead_spools.append(self.workdir / "spool" / "order")
        self.step(f"[yellow]fault[/]: order service SIGKILLed after committing {ns['order_id']}, before sending")
        order = self.start_app("order", "order", "orders.db")  # restarted; adopts the dead one's spool

        # 2. the network to the broker cut during a send; the app swallows the error
        sf = self.new_order("send_failed")
        self.proxy.cut()
        self.pay(sf)
        order.wait_event("send_error", order_id=sf["order_id"], timeout=30)
        self.proxy.heal()
        self.step(f"[yellow]fault[/]: network cut during the send of {sf['order_id']}; error swallowed")

        # 4. auto-commit runs ahead of the worker thread; the instance is SIGKILLed
        for g in GROUPS:
            wait_until(lambda: self.caught_up(g), 60, f"{g} caught up before the crash", )
        slow = self.new_order("lost_in_consumer", user="slow-1")
        self.pay(slow)
        victim = wait_until(lambda: next((a for n, a in self.apps.items() if n.startswith("red-packet")
                                          and a.find("slow_payment", order_id=slow["order_id"])), None),
                            30, "a red-packet instance to start the slow payment")
        rec = victim.find("processing", order_id=slow["order_id"])[-1]
        # the victim's own auto-commit (confirmed to it by the broker) has passed the in-flight message
        victim.wait(lambda: any(int(c["offsets"].get(str(rec["partition"]), -1)) > rec["offset"]
                                for c in victim.find("auto_committed")), 30,
                    "auto-commit to pass the in-flight message")
        victim.kill()
        self.dead_spools.append(self.workdir / "spool" / victim.name)
        survivor = rp2 if victim is rp1 else rp1
        survivor.wait(lambda: survivor.assigned() == [0, 1], 60, "the surviving instance to take over")
        self.step(f"[yellow]fault[/]: {victim.name} SIGKILLed mid-payment of {slow['order_id']} "
                  "after auto-commit covered it; the survivor took over")

        # 7. processed, killed before the manual commit, redelivered after the rebalance
        wait_until(lambda: self.caught_up("points"), 30, "points caught up")
        r = self.new_order("redelivered")
        self.pay(r)
        victim = wait_until(lambda: next((a for a in self.alive("points")
                                          if a.find("points", order_id=r["order_id"], fresh=True)), None),
                            30, "a points instance to process the order")
        victim.kill()  # before its next commit (every 3 s)
        self.dead_spools.append(self.workdir / "spool" / victim.name)
        survivor = pts2 if victim is pts1 else pts1
        survivor.wait(lambda: survivor.assigned() == [0, 1], 60, "the surviving points instance to take over")
        survivor.wait_event("points", order_id=r["order_id"], fresh=False, timeout=60)
        self.step(f"[yellow]fault[/]: {victim.name} SIGKILLed after processing {r['order_id']}, before "
                  "committing; redelivered to the survivor after the rebalance (idempotent)")

        # traffic after the faults
        batch = [self.new_order("delivered") for _ in range(max(4, self.scale // 4))]
        for o in batch:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in batch])
        order.send(op="flush")
        order.wait_event("flushed")
        wait_until(lambda: self.caught_up("points"), 30, "points' last commit")
        self.step(f"{len(batch)} more orders delivered after the faults; stopping the services")
        for app in list(self.apps.values()):
            app.stop()

    def cleanup(self) -> None:
        for app in self.apps.values():
            try:
                app.kill()
            except Exception:
                pass
        if self.proxy:
            self.proxy.close()
        for b in self.brokers:
            b.stop()
