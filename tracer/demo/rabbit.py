"""The red-packet story on RabbitMQ (pika), with the losses that apply there, each a real fault.

A RabbitMQ node of the demo's own (loopback, free ports, its own data dir: a restart loses what was
held in memory only), a TCP fault proxy in front of it for the order service, the audit through a
Tansu audit broker and the collector as on Kafka. Topology in :mod:`tracer.demo.rabbit_apps`: a
fanout exchange with one queue per group (the reconciler expects every queue bound to an exchange
to get every message sent to it), a dead-letter exchange for the red-packet queue.

The red-packet service starts as the seeds' version (``auto_ack=True`` and a worker pool); after it
lost a payment, the fix is deployed (manual acks after the work), and the later faults hit that one:
a swallowed handler error is acked, a poison message is rejected to the dead-letter exchange.
``msgtrace replay`` re-publishes to Kafka only, so this story ends with the verdicts.
"""
from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from tracer.demo.apps import PAYMENT_API_HANGS
from tracer.demo.base import Category, StoryBase, build_categories
from tracer.demo.proxy import FaultProxy
from tracer.localsvc import RabbitMQServer

CASES = {
    "delivered": "the normal path",
    "never_sent": "order committed, process killed before the publish",
    "send_failed": "connection cut during the publish (confirm mode), error swallowed",
    "lost_in_broker": "non-persistent message confirmed, broker restarted before consumption",
    "lost_in_consumer": "auto_ack consumer handed it to a worker thread; instance SIGKILLed",
    "failed_and_committed": "handler raised, error swallowed, message acked",
    "dead_lettered": "poison message rejected (requeue=False) to the dead-letter exchange",
    "redelivered": "points instance killed after processing, before its ack: requeued",
}


def categories() -> dict[str, Category]:
    return build_categories(CASES, replay=False)


class RabbitStory(StoryBase):
    """Runs the RabbitMQ story; see ``run()``."""

    mq = "rabbitmq"
    client = "pika"

    def __init__(self, workdir: Path, scale: int = 20, seed: int = 7, sink: str = "collector",
                 console: Console | None = None) -> None:
        self.node: RabbitMQServer | None = None
        self.proxy: FaultProxy | None = None
        super().__init__(workdir, scale=scale, seed=seed, sink=sink, console=console)

    def categories(self) -> dict[str, Category]:
        return categories()

    def describe(self) -> str:
        return "RabbitMQ (pika)"

    def app_argv(self, role: str) -> list[str]:
        assert self.node is not None and self.proxy is not None
        if role == "order":  # the order service reaches the broker through the fault proxy
            return ["--amqp-url", f"amqp://guest:guest@{self.proxy.address}/"]
        return ["--amqp-url", self.node.url()]

    def declare(self) -> None:
        """The topology, before any service runs (a plain channel: nothing of it is traced)."""
        from tracer.demo.rabbit_apps import connect, declare

        assert self.node is not None
        conn = connect(self.node.url())
        try:
            declare(conn.channel())
        finally:
            conn.close()

    @staticmethod
    def acked_all(app: Any) -> bool:
        """Has this points instance acked everything it processed?"""
        done = app.find("points")
        acks = app.find("acked")
        return not done or bool(acks and acks[-1]["total"] >= done[-1]["processed"])

    def settle(self) -> None:
        for app in self.alive("points"):
            app.wait(partial(self.acked_all, app), 30, "points to ack everything it processed")
        self.flush_services()

    def cleanup(self) -> None:
        for app in self.apps.values():
            with contextlib.suppress(Exception):  # cleanup goes on whatever one process did
                app.kill()
        if self.proxy:
            self.proxy.close()
        if self.node is not None:
            self.node.kill()
        for b in self.brokers:
            b.stop()

    # --- the story -------------------------------------------------------------------------------------
    def run(self) -> None:
        w = self.workdir
        self.node = RabbitMQServer(workdir=str(w / "rabbitmq"))
        self.node.start()
        self.start_audit()
        self.proxy = FaultProxy(self.node.port)
        self.declare()
        self.step(f"brokers up: RabbitMQ node {self.node.endpoint.redacted()} (the order service through a fault "
                  f"proxy at {self.proxy.address}), audit Kafka {self.audit_bootstrap}; store {self.store_url}")
        order = self.start_app("order", "order", "orders.db")

        # the broker confirms non-persistent messages, then restarts: they were in memory only
        lost = [self.new_order("lost_in_broker") for _ in range(2)]
        for o in lost:
            self.pay(o, transient=True)
        for o in lost:
            order.wait_event("acked", order_id=o["order_id"])
        self.step(f"[yellow]fault[/]: RabbitMQ restarted after confirming {len(lost)} non-persistent orders "
                  "(durable queues, messages in memory only, never consumed)")
        order.stop()  # a deploy goes by; its spool is shipped on the way out
        self.node.restart()
        self.proxy.reset_all()
        order = self.start_app("order", "order", "orders.db")

        rp1 = self.start_app("red-packet-1", "red-packet", "redpacket.db", ack="auto")
        rp2 = self.start_app("red-packet-2", "red-packet", "redpacket.db", ack="auto")
        pts1 = self.start_app("points-1", "points", "points.db", commit_every="3")
        pts2 = self.start_app("points-2", "points", "points.db", commit_every="3")
        self.step("consumers ready: red-packet x2 (auto_ack, worker threads), points x2 (manual acks every 3 s)")

        batch = [self.new_order("delivered") for _ in range(self.scale)]
        for o in batch:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in batch])
        self.step(f"{len(batch)} orders paid and delivered to both queues")
        self.audit_broker_fault([o["order_id"] for o in batch])  # the audit's own broker loses their events

        # order committed, process killed before the publish
        ns = self.new_order("never_sent")
        self.pay(ns, crash_before_send=True)
        order.proc.wait(30)
        self.dead_spools.append(w / "spool" / "order")
        self.step(f"[yellow]fault[/]: order service SIGKILLed after committing {ns['order_id']}, before publishing")
        order = self.start_app("order", "order", "orders.db")  # restarted; adopts the dead one's spool

        # the connection cut during a publish (confirm mode: the publish raises); the app swallows it
        sf = self.new_order("send_failed")
        self.proxy.cut()
        self.pay(sf)
        order.wait_event("send_error", order_id=sf["order_id"], timeout=30)
        self.proxy.heal()
        self.step(f"[yellow]fault[/]: connection to RabbitMQ cut during the publish of {sf['order_id']}; "
                  "error swallowed")

        # auto_ack: the broker forgot the message at delivery; the worker hangs, the instance is killed
        slow = self.new_order("lost_in_consumer", user="slow-1")
        self.fault(PAYMENT_API_HANGS, True)
        self.pay(slow)
        victim = self.wait_logged("red-packet", "slow_payment", 30, "a red-packet instance to start the slow payment",
                                  order_id=slow["order_id"])
        victim.kill()
        self.fault(PAYMENT_API_HANGS, False)
        self.dead_spools.append(w / "spool" / victim.name)
        self.step(f"[yellow]fault[/]: {victim.name} (auto_ack) SIGKILLed mid-payment of {slow['order_id']}")

        # the remedy deployed: manual acks after the work (a rolling deploy: the new one first)
        survivor = rp2 if victim is rp1 else rp1
        self.start_app("red-packet-3", "red-packet", "redpacket.db", ack="manual")
        survivor.stop()
        self.step(f"red-packet redeployed with manual acks (red-packet-3 up, {survivor.name} stopped)")

        # a handler error swallowed and acked; poison messages rejected to the dead-letter exchange
        frozen = [self.new_order("failed_and_committed", user=f"frozen-{i}") for i in range(2)]
        poison = [self.new_order("dead_lettered", amount=a) for a in ("-5.00", "NaN")]
        for o in frozen + poison:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in frozen], rp_event="handler_error")
        self.done_everywhere([o["order_id"] for o in poison], rp_event="dead_lettered")
        self.step(f"[yellow]fault[/]: {len(frozen)} payments rejected, swallowed and acked; "
                  f"{len(poison)} poison messages dead-lettered")

        # processed, killed before the ack: RabbitMQ requeues it to the other instance
        for app in self.alive("points"):
            app.wait(partial(self.acked_all, app), 30, "points to ack everything it processed")
        r = self.new_order("redelivered")
        self.pay(r)
        victim = self.wait_logged("points", "points", 30, "a points instance to process the order",
                                  order_id=r["order_id"], fresh=True)
        victim.kill()  # before its next ack (every 3 s)
        self.dead_spools.append(w / "spool" / victim.name)
        survivor = pts2 if victim is pts1 else pts1
        # (by its own log: RabbitMQ's redelivered flag is only a hint, set or not; msgtrace counts receipts)
        survivor.wait_event("points", order_id=r["order_id"], fresh=False, timeout=60)
        self.step(f"[yellow]fault[/]: {victim.name} SIGKILLed after processing {r['order_id']}, before acking; "
                  "RabbitMQ redelivered it to the other instance (idempotent)")

        batch = [self.new_order("delivered") for _ in range(max(4, self.scale // 4))]
        for o in batch:
            self.pay(o)
        self.done_everywhere([o["order_id"] for o in batch])
        self.settle()
        self.step(f"{len(batch)} more orders delivered after the faults; every service shipped its audit events")
